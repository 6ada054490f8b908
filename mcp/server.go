// Package mcp serves sandq to AI assistants over the Model Context
// Protocol: a run_code tool that runs a script in a sandbox and returns
// its output, images and files, and run_job_status and cancel_job to
// follow a job that outlives a call. Every call is an ordinary sandq job,
// submitted through the producer path (jobs.Client), so it is queued,
// limited, audited and reported (result, webhook) like any other; the
// server keeps no state of its own, so any number of them can serve one
// queue.
//
// Over stdio (a desktop assistant starting `sandq mcp`) jobs are submitted
// as a direct producer. Over streamable HTTP (`sandq mcp --listen`) every
// request carries an API token (api.AuthConfig), and its jobs are its
// tenant's, seen and changed only through the tenant's view, as the API
// does.
package mcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sandq/sandq/api"
	"github.com/sandq/sandq/jobs"
)

// Defaults of Config.
const (
	DefaultMaxWait         = 5 * time.Minute
	DefaultMaxInlineBytes  = 64 << 10
	DefaultMaxImageBytes   = 2 << 20
	DefaultMaxInlineFiles  = 8
	defaultStatusWaitLimit = 60 * time.Second
)

// Config configures a Server.
type Config struct {
	// Client submits and follows jobs. The server does not close it.
	Client *jobs.Client
	// Queue is where jobs go; empty is the client's default queue.
	Queue string
	// ImageDir is where the images' metadata (their package lists) is read
	// from for the tools' descriptions, when this host has them; empty
	// skips it.
	ImageDir string
	// MaxWait is the longest a run_code call waits for its job; a job
	// still running then is left to run, and the call returns its ID for
	// run_job_status.
	MaxWait time.Duration
	// MaxInlineBytes is the largest text output returned inline;
	// MaxImageBytes the largest image returned as image content;
	// MaxInlineFiles the most outputs inlined per result. Other outputs
	// are returned as links.
	MaxInlineBytes int64
	MaxImageBytes  int64
	MaxInlineFiles int
	// Auth, for the HTTP transport, holds the tenants and tokens (the
	// API's auth config). Without it the HTTP handler refuses every
	// request.
	Auth *api.AuthConfig
	// Version is the server's version, told to clients.
	Version string
	Logger  *slog.Logger
}

// Server is the MCP server: its tools and their descriptions, built from
// the queue's live configuration when it starts.
type Server struct {
	cfg    Config
	queue  string
	sandbx *Sandbox
	logger *slog.Logger
	// http is set once Handler is made: calls then take a verified token.
	http bool
}

// New builds a server, reading what the queue's workers published (images,
// network policy) for the tools' descriptions.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Client == nil {
		return nil, errors.New("mcp: no jobs client")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.MaxInlineBytes <= 0 {
		cfg.MaxInlineBytes = DefaultMaxInlineBytes
	}
	if cfg.MaxImageBytes <= 0 {
		cfg.MaxImageBytes = DefaultMaxImageBytes
	}
	if cfg.MaxInlineFiles <= 0 {
		cfg.MaxInlineFiles = DefaultMaxInlineFiles
	}
	queue := cfg.Queue
	if queue == "" {
		queue = cfg.Client.Config().Queue
	}
	if err := jobs.CheckQueue(queue); err != nil {
		return nil, fmt.Errorf("mcp: %w", err)
	}
	sb, err := describeSandbox(ctx, cfg.Client, queue, cfg.ImageDir)
	if err != nil {
		return nil, fmt.Errorf("mcp: %w", err)
	}
	return &Server{cfg: cfg, queue: queue, sandbx: sb, logger: cfg.Logger}, nil
}

// Sandbox is what the server tells assistants about the sandbox.
func (s *Server) Sandbox() *Sandbox { return s.sandbx }

// mcpServer is the protocol server with the tools; each call's jobs go
// through the backend backendOf picks for its request.
func (s *Server) mcpServer() *sdk.Server {
	srv := sdk.NewServer(&sdk.Implementation{Name: "sandq", Title: "sandq sandboxes", Version: s.cfg.Version}, &sdk.ServerOptions{
		Instructions: s.sandbx.instructions(),
		Logger:       s.logger,
	})
	sdk.AddTool(srv, &sdk.Tool{
		Name:        "run_code",
		Title:       "Run code in a sandbox",
		Description: s.sandbx.runCodeDescription(s.cfg.MaxWait),
		Annotations: &sdk.ToolAnnotations{OpenWorldHint: boolPtr(len(s.sandbx.Network.Max) > 0), DestructiveHint: boolPtr(false)},
	}, s.runCode)
	sdk.AddTool(srv, &sdk.Tool{
		Name:        "run_job_status",
		Title:       "Status of a sandbox job",
		Description: "State of a job run_code started (by its job_id), waiting up to wait_seconds (at most 60) for it to end; once it has ended, its result as run_code returns it: exit status, stdout/stderr tails, outputs (text inline, images as images, other files as links).",
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: boolPtr(false)},
	}, s.jobStatus)
	sdk.AddTool(srv, &sdk.Tool{
		Name:        "cancel_job",
		Title:       "Cancel a sandbox job",
		Description: "Cancel a job run_code started (by its job_id): a queued job is removed, a running one is killed and ends canceled. A job that has ended cannot be cancelled.",
		Annotations: &sdk.ToolAnnotations{DestructiveHint: boolPtr(true), IdempotentHint: true, OpenWorldHint: boolPtr(false)},
	}, s.cancelJob)
	return srv
}

// RunStdio serves one client over standard input and output until it
// disconnects or ctx ends. Jobs are submitted as a direct producer.
func (s *Server) RunStdio(ctx context.Context) error {
	err := s.mcpServer().Run(ctx, &sdk.StdioTransport{})
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

func boolPtr(b bool) *bool { return &b }
