package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sandq/sandq/storage"
)

func s3Command() *cli.Command {
	roles := make([]string, len(storage.Roles))
	for i, r := range storage.Roles {
		roles[i] = string(r)
	}
	return &cli.Command{
		Name:  "s3",
		Usage: "prepare the object store: the bucket, its expiry rule, and least-privilege policies",
		Subcommands: []*cli.Command{
			{
				Name: "setup",
				Usage: "with the store's admin credentials: make the bucket if missing and set the expiry rule of jobs/ " +
					"from --result-retention and --link-expiry (give it the workers' settings), so workers need no right to change the bucket",
				Action: func(c *cli.Context) error {
					cfg, err := loadConfig(c)
					if err != nil {
						return err
					}
					store, err := newStore(cfg)
					if err != nil {
						return err
					}
					if err := store.EnsureBucket(c.Context); err != nil {
						return fmt.Errorf("object store at %s: %w", cfg.Storage.Endpoint, err)
					}
					days := cfg.ObjectExpiryDays()
					if err := store.SetPrefixExpiry(c.Context, storage.ObjectPrefix, days); err != nil {
						return fmt.Errorf("object store at %s: %w", cfg.Storage.Endpoint, err)
					}
					fmt.Fprintf(c.App.Writer, "bucket %s ready: objects under %s expire %d days after they are written\n"+
						"give workers and API servers their own credentials: sandq s3 policy worker|producer\n",
						cfg.Storage.Bucket, storage.ObjectPrefix, days)
					return nil
				},
			},
			{
				Name:      "policy",
				Usage:     "print the IAM policy (JSON) that grants a role exactly the S3 actions it needs on --s3-bucket",
				ArgsUsage: strings.Join(roles, "|"),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("role: give one of %s", strings.Join(roles, ", "))
					}
					doc, err := storage.Policy(c.String("s3-bucket"), storage.Role(c.Args().First()))
					if err != nil {
						return err
					}
					_, err = c.App.Writer.Write(doc)
					return err
				},
			},
		},
	}
}
