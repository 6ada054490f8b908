package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/jobs/webhook"
)

func webhookCommand() *cli.Command {
	return &cli.Command{
		Name:  "webhook",
		Usage: "webhook tools: verify a saved delivery, make a signing secret",
		Subcommands: []*cli.Command{
			{
				Name:      "verify",
				Usage:     "check the signature of a saved webhook request (raw HTTP: request line, headers, blank line, body)",
				ArgsUsage: "[FILE] (default: standard input)",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "secret", Required: true, EnvVars: env("WEBHOOK_SECRET"), Usage: "whsec_ secret (repeatable: any may match)"},
					&cli.BoolFlag{Name: "ignore-age", Usage: "accept timestamps older than 5 minutes (for old saved requests)"},
				},
				Action: func(c *cli.Context) error {
					in := io.Reader(os.Stdin)
					if c.NArg() > 0 {
						f, err := os.Open(c.Args().First())
						if err != nil {
							return err
						}
						defer f.Close()
						in = f
					}
					req, err := http.ReadRequest(bufio.NewReader(in))
					if err != nil {
						return fmt.Errorf("not an HTTP request: %w", err)
					}
					body, err := io.ReadAll(req.Body)
					if err != nil {
						return fmt.Errorf("reading the body: %w", err)
					}
					now := time.Now()
					if c.Bool("ignore-age") {
						if sec := req.Header.Get("webhook-timestamp"); sec != "" {
							var n int64
							if _, err := fmt.Sscan(sec, &n); err == nil {
								now = time.Unix(n, 0)
							}
						}
					}
					if err := webhook.Verify(c.StringSlice("secret"), req.Header, body, now); err != nil {
						return cli.Exit("not verified: "+err.Error(), exitJobNotSucceeded)
					}
					fmt.Fprintf(c.App.Writer, "verified: webhook-id %s, %d bytes\n", req.Header.Get("webhook-id"), len(body))
					return nil
				},
			},
			{
				Name:  "secret",
				Usage: "print a new whsec_ signing secret",
				Action: func(c *cli.Context) error {
					s, err := webhook.NewSecret()
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, s)
					return nil
				},
			},
		},
	}
}
