package mcp

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
)

// Sandbox is what the tools' descriptions say about the sandbox, read
// from the live configuration when the server starts: the queue's images
// (as its workers publish them) and their packages (from the image
// metadata, when this host has the images), the limits, and the network
// policy the queue's workers publish.
type Sandbox struct {
	Queue string
	// DefaultImage is the image of jobs that name none; Images every
	// image jobs may name, with its packages when known.
	DefaultImage string
	Images       []ImageInfo
	Default, Max jobs.Limits
	// MaxScript, MaxInputs, MaxInputBytes and MaxInputsTotal are the caps
	// of a job's files.
	MaxScript, MaxInputBytes, MaxInputsTotal int64
	MaxInputs                                int
	// Network is the queue's published policy; empty Max: no network.
	Network jobs.QueueNetwork
}

// ImageInfo is one image jobs may run on.
type ImageInfo struct {
	Name string
	// Packages are the (Debian) packages it was built with; nil when this
	// host does not have the image or it was imported.
	Packages []string
}

func describeSandbox(ctx context.Context, c *jobs.Client, queue, imageDir string) (*Sandbox, error) {
	cfg := c.Config()
	sb := &Sandbox{
		Queue: queue, Default: cfg.DefaultLimits, Max: cfg.MaxLimits,
		MaxScript: cfg.MaxScriptBytes, MaxInputs: cfg.MaxInputs, MaxInputBytes: cfg.MaxInputBytes, MaxInputsTotal: cfg.MaxInputsTotal,
	}
	imgs, err := c.PublishedImages(ctx, queue)
	if err != nil {
		return nil, err
	}
	names := []string{cfg.Worker.Image}
	sb.DefaultImage = cfg.Worker.Image
	if imgs != nil {
		sb.DefaultImage, names = imgs.Default, imgs.Allowed
	}
	for _, name := range names {
		info := ImageInfo{Name: name}
		if imageDir != "" {
			if img, err := image.Lookup(imageDir, name); err == nil {
				info.Packages = img.Packages
			}
		}
		sb.Images = append(sb.Images, info)
	}
	netw, err := c.PublishedNetwork(ctx, queue)
	if err != nil {
		return nil, err
	}
	if netw != nil {
		sb.Network = *netw
	}
	return sb, nil
}

// instructions are the server's instructions to the assistant.
func (sb *Sandbox) instructions() string {
	return "sandq runs code in fresh gVisor sandboxes, one per call, queued as sandq jobs. Use run_code to compute, analyse data and draw charts; files a script writes to $OUTPUT_DIR come back (text inline, images as images, other files as links). Nothing persists between calls but outputs, which a later call can take as inputs (inputs_from)."
}

// runCodeDescription is run_code's description: what the sandbox has.
func (sb *Sandbox) runCodeDescription(maxWait time.Duration) string {
	var b strings.Builder
	b.WriteString("Run a script (language python, node or shell) in a fresh, isolated Linux sandbox (gVisor) and return its exit status, the tails of its stdout and stderr, and the files it wrote to the directory $OUTPUT_DIR: small text files inline, images (png, jpeg, gif, webp) as images, other files as download links. ")
	b.WriteString("Files given in `files` (text or base64) and outputs of earlier jobs given in `inputs_from` are in $INPUT_DIR (/mnt/inputs); the working directory is the script's. Each call is a new sandbox: nothing is kept between calls but the outputs. Save charts with e.g. matplotlib's savefig to $OUTPUT_DIR.\n\n")
	for _, img := range sb.Images {
		if img.Name == sb.DefaultImage {
			fmt.Fprintf(&b, "Image %q (the default)", img.Name)
		} else {
			fmt.Fprintf(&b, "Image %q (pass image=%q)", img.Name, img.Name)
		}
		if len(img.Packages) > 0 {
			fmt.Fprintf(&b, ": a minimal Debian with the packages %s.\n", strings.Join(img.Packages, ", "))
		} else {
			b.WriteString(": packages not known to this server.\n")
		}
	}
	fmt.Fprintf(&b, "\nLimits: timeout %s by default, at most %s (timeout_seconds); memory %s; disk %s; CPUs %g; outputs at most %d files and %s.",
		sb.Default.Timeout, sb.Max.Timeout, jobs.FormatSize(sb.Default.Memory), jobs.FormatSize(sb.Default.Disk), sb.Default.CPUs,
		sb.Default.OutputFiles, jobs.FormatSize(sb.Default.OutputBytes))
	fmt.Fprintf(&b, " Script at most %s; at most %d input files, each at most %s, %s in all.",
		jobs.FormatSize(sb.MaxScript), sb.MaxInputs, jobs.FormatSize(sb.MaxInputBytes), jobs.FormatSize(sb.MaxInputsTotal))
	fmt.Fprintf(&b, " A call waits at most %s for its job; a longer job goes on running and run_job_status gets its result.\n\n", maxWait)
	b.WriteString(sb.networkText())
	return b.String()
}

// networkText describes the network policy.
func (sb *Sandbox) networkText() string {
	n := sb.Network
	if len(n.Max) == 0 {
		return "Network: none. The sandbox cannot reach any host (no package installs from the network); use what the image has."
	}
	var b strings.Builder
	b.WriteString("Network: none unless asked for in `network`, through an HTTP(S) proxy (HTTPS_PROXY is set; pip, npm and curl use it). May be asked for: ")
	var parts []string
	for _, m := range n.Max {
		if hosts, ok := n.Groups[m]; ok {
			parts = append(parts, fmt.Sprintf("group %q (%s)", m, strings.Join(hosts, ", ")))
		} else {
			parts = append(parts, fmt.Sprintf("host %q", m))
		}
	}
	b.WriteString(strings.Join(parts, "; "))
	if len(n.Default) > 0 {
		fmt.Fprintf(&b, "; \"default\" is %s", strings.Join(n.Default, ", "))
	}
	// Ports is never empty: workers publish their policy with its defaults
	// filled (jobs.EgressConfig.WithDefaults).
	fmt.Fprintf(&b, ". Ports %s. Any other host is refused, and the result lists the refusals.", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(n.Ports)), ", "), "[]"))
	return b.String()
}
