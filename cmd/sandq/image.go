package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/executor/image"
	"github.com/sandq/sandq/jobs"
	"github.com/sandq/sandq/worker"
)

// imageDirFlag is the image commands' --image-dir. Its Value is the
// default: the image package's functions take the directory as given.
func imageDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "image-dir", Value: image.DefaultDir, EnvVars: env("IMAGE_DIR"), Usage: "where images live"}
}

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "manage sandbox images",
		Subcommands: []*cli.Command{
			imageBuildCommand(),
			imageImportCommand(),
			imageListCommand(),
			imagePreloadCommand(),
			imageSnapshotCommand(),
			imageHardenCommand(),
			imageRmCommand(),
		},
	}
}

func imageBuildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build an image from Debian packages with debootstrap (skipped when nothing changed; as root)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "packages-file", Required: true, Usage: "package names, whitespace-separated, # comments"},
			&cli.StringFlag{Name: "overlay", Usage: "directory of files (config files) copied into the image after the packages, owned by root"},
			preloadFileFlag(),
			imageDirFlag(),
			&cli.StringFlag{Name: "mirror", EnvVars: env("DEBIAN_MIRROR"), Usage: "Debian mirror (default: the host's configured one)"},
			&cli.StringFlag{Name: "suite", DefaultText: quoted(image.DefaultSuite)},
			&cli.BoolFlag{Name: "force", Usage: "rebuild even if up to date"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("image build takes exactly one NAME")
			}
			pkgs, err := image.ReadListFile(c.String("packages-file"))
			if err != nil {
				return err
			}
			preload, err := readPreloadFile(c)
			if err != nil {
				return err
			}
			start := time.Now()
			// The phases and package counts go to stderr (see progress.go);
			// the log shares it, so its lines pass through the progress.
			prog := newBuildProgress(os.Stderr, isTerminal(os.Stderr), time.Now)
			stopTicker := func() {}
			if prog.term {
				stopTicker = ticker(time.Second, prog.tick)
			}
			img, err := image.Build(c.Context, image.BuildOptions{
				Name: c.Args().First(), Dir: c.String("image-dir"), Packages: pkgs, Suite: c.String("suite"),
				Mirror: c.String("mirror"), Overlay: c.String("overlay"), Preload: preload, Force: c.Bool("force"),
				Logger: newLoggerTo(c, prog.logWriter()), Progress: prog.event,
			})
			stopTicker()
			prog.close()
			if err != nil {
				return err
			}
			state := "built"
			if img.Cached {
				state = "up to date"
			}
			fmt.Fprintf(c.App.Writer, "image %s %s in %.1fs: %s (digest %s)\n", img.Name, state, time.Since(start).Seconds(), img.Rootfs, img.Digest)
			return nil
		},
	}
}

func imageImportCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "flatten an OCI image layout (directory or tar) or a `docker save` tarball into an image (as root)",
		ArgsUsage: "ARCHIVE NAME",
		Flags: []cli.Flag{
			imageDirFlag(),
			&cli.StringFlag{Name: "max-size", DefaultText: sizeText(image.DefaultMaxImportBytes), EnvVars: env("IMPORT_MAX_SIZE"),
				Usage: "cap on the bytes unpacked, counted as decompressed whether written or not: the archive's own stream (if gzipped), and the layers' together; at most " + jobs.FormatSize(image.MaxImportBytesLimit)},
			&cli.Int64Flag{Name: "max-entries", DefaultText: intText(image.DefaultMaxImportEntries), EnvVars: env("IMPORT_MAX_ENTRIES"),
				Usage: fmt.Sprintf("cap on the tar entries of the archive and all its layers; at most %d", image.MaxImportEntriesLimit)},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing image of the same name"},
			preloadFileFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return errors.New("image import takes ARCHIVE and NAME")
			}
			// Caps not set are left to image.Import's defaults.
			var maxSize int64
			if c.IsSet("max-size") {
				n, err := jobs.ParseSize(c.String("max-size"))
				if err != nil || n <= 0 || n > image.MaxImportBytesLimit {
					return fmt.Errorf("--max-size %q: must be a positive size such as 16GiB, at most %s", c.String("max-size"), jobs.FormatSize(image.MaxImportBytesLimit))
				}
				maxSize = n
			}
			if n := c.Int64("max-entries"); c.IsSet("max-entries") && (n <= 0 || n > image.MaxImportEntriesLimit) {
				return fmt.Errorf("--max-entries %d: must be positive, at most %d", n, image.MaxImportEntriesLimit)
			}
			preload, err := readPreloadFile(c)
			if err != nil {
				return err
			}
			start := time.Now()
			img, err := image.Import(c.Context, image.ImportOptions{
				Archive: c.Args().Get(0), Name: c.Args().Get(1), Dir: c.String("image-dir"), Preload: preload,
				MaxBytes: maxSize, MaxEntries: c.Int64("max-entries"), Force: c.Bool("force"), Logger: newLogger(c),
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "image %s imported in %.1fs: %s (digest %s, config %s)\n", img.Name, time.Since(start).Seconds(), img.Rootfs, img.Digest, img.ConfigDigest)
			return nil
		},
	}
}

// preloadFileFlag is --preload-file of image build and import.
func preloadFileFlag() cli.Flag {
	return &cli.StringFlag{Name: "preload-file", Usage: "Python modules the image's snapshot template imports (see sandq image preload), whitespace-separated, # comments"}
}

// readPreloadFile reads --preload-file, none when it is not set.
func readPreloadFile(c *cli.Context) ([]string, error) {
	path := c.String("preload-file")
	if path == "" {
		return nil, nil
	}
	mods, err := image.ReadListFile(path)
	if err != nil {
		return nil, fmt.Errorf("--preload-file: %w", err)
	}
	if err := image.CheckPreload(mods); err != nil {
		return nil, fmt.Errorf("--preload-file %s: %w", path, err)
	}
	return mods, nil
}

func imagePreloadCommand() *cli.Command {
	return &cli.Command{
		Name: "preload",
		Usage: "show or set the Python modules an image's snapshot template imports (matplotlib with the Agg backend); " +
			"workers with --snapshots make a new template when the list changes, and make none for an image without one",
		ArgsUsage: "NAME [MODULE...]",
		Flags: []cli.Flag{
			imageDirFlag(),
			&cli.BoolFlag{Name: "clear", Usage: "remove the list: the image gets no template"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return errors.New("image preload takes a NAME, then the modules to set")
			}
			name, mods := c.Args().First(), c.Args().Tail()
			if c.Bool("clear") && len(mods) > 0 {
				return errors.New("image preload: --clear takes no modules")
			}
			if len(mods) == 0 && !c.Bool("clear") {
				img, err := image.Lookup(c.String("image-dir"), name)
				if err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, strings.Join(img.Preload, " "))
				return nil
			}
			img, err := image.SetPreload(c.String("image-dir"), name, mods)
			if err != nil {
				return err
			}
			if len(img.Preload) == 0 {
				fmt.Fprintf(c.App.Writer, "image %s: no preload list\n", img.Name)
			} else {
				fmt.Fprintf(c.App.Writer, "image %s preloads %s\n", img.Name, strings.Join(img.Preload, " "))
			}
			return nil
		},
	}
}

func imageSnapshotCommand() *cli.Command {
	return &cli.Command{
		Name: "snapshot",
		Usage: "make the snapshot templates workers with --snapshots would make when they start (of the images named, or of every image " +
			"the worker's flags name that declares a preload list), so that they start at once; takes the worker's flags, which the templates must match (as root)",
		ArgsUsage: "[NAME...]",
		Flags:     workerFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := loadWorkerConfig(c)
			if err != nil {
				return err
			}
			ctx, stop := interruptible(c)
			defer stop()
			ts, err := worker.MakeTemplates(ctx, cfg, c.Args().Slice(), newLogger(c))
			if err != nil {
				return err
			}
			for _, t := range ts {
				fmt.Fprintf(c.App.Writer, "template %s: preloads %s; made in %.1fs (checkpoint %s)\n", t.Dir, strings.Join(t.Info.Preload, " "),
					float64(t.Info.PreloadMS+t.Info.CheckpointMS)/1000, humanSize(t.Info.CheckpointBytes))
			}
			return nil
		},
	}
}

func imageListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the images in the image directory",
		Flags: []cli.Flag{
			imageDirFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print a JSON array with every recorded field"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return errors.New("image list takes no arguments")
			}
			imgs, err := image.List(c.String("image-dir"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if imgs == nil {
					imgs = []*image.Image{}
				}
				b, _ := json.MarshalIndent(imgs, "", "  ")
				fmt.Fprintln(c.App.Writer, string(b))
				return nil
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tSOURCE\tSIZE\tCREATED")
			for _, img := range imgs {
				digest, size := "-", "-"
				if img.Digest != "" {
					digest = shortDigest(img.Digest)
					size = humanSize(img.Size)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Name, digest, img.Source, size, img.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}

func imageHardenCommand() *cli.Command {
	return &cli.Command{
		Name:      "harden",
		Usage:     "bring images made by an older sandq up to date: strip setuid/setgid and world-write bits, file capabilities and device nodes, make their directories 0700, record the new digest (as root; workers do it for their own images when they start)",
		ArgsUsage: "[NAME...]",
		Flags:     []cli.Flag{imageDirFlag()},
		Action: func(c *cli.Context) error {
			names := c.Args().Slice()
			if len(names) == 0 {
				imgs, err := image.List(c.String("image-dir"))
				if err != nil {
					return err
				}
				for _, img := range imgs {
					names = append(names, img.Name)
				}
			}
			for _, name := range names {
				img, err := image.Harden(c.String("image-dir"), name, newLogger(c))
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "image %s hardened (digest %s)\n", img.Name, img.Digest)
			}
			return nil
		},
	}
}

func imageRmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove images (jobs still running on one may fail)",
		ArgsUsage: "NAME...",
		Flags:     []cli.Flag{imageDirFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return errors.New("image rm takes one or more NAMEs")
			}
			for _, name := range c.Args().Slice() {
				if err := image.Remove(c.String("image-dir"), name); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "image %s removed\n", name)
			}
			return nil
		},
	}
}

// shortDigest is the first 12 hex digits of a "sha256:..." digest.
func shortDigest(d string) string {
	h := strings.TrimPrefix(d, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
