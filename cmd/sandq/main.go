// Command sandq submits analysis jobs, runs workers that execute them in
// gVisor sandboxes, and runs a local stack for development.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	exitJobNotSucceeded = 1
	exitError           = 2
)

func main() {
	app := newApp()
	if err := app.Run(permuteArgs(app, os.Args)); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "sandq:", msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "sandq:", err)
		os.Exit(exitError)
	}
}

// newApp returns the command line: every command and flag sandq has.
func newApp() *cli.App {
	return &cli.App{
		Name:  "sandq",
		Usage: "run untrusted analysis scripts in fresh gVisor sandboxes, queued in Redis, outputs in S3",
		Flags: globalFlags(),
		Commands: []*cli.Command{
			enqueueCommand(),
			statusCommand(),
			waitCommand(),
			logsCommand(),
			cancelCommand(),
			downloadCommand(),
			workerCommand(),
			devCommand(),
			imageCommand(),
			webhookCommand(),
			serveCommand(),
			tokenCommand(),
			benchCommand(),
			s3Command(),
			mcpCommand(),
		},
		ExitErrHandler: func(c *cli.Context, err error) {},
	}
}

// permuteArgs moves a command's flags in front of its positional arguments,
// so that `sandq enqueue script.py --input data.csv` works (urfave/cli v2
// stops parsing flags at the first positional argument), and global flags
// given after the command to before it. "--" ends flags.
func permuteArgs(app *cli.App, args []string) []string {
	out := append([]string{}, args[0])
	i := 1
	var global []string
	firstCommand := 0
	// Global flags come before the command.
	cmds := app.Commands
	var cmd *cli.Command
	for i < len(args) {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			out = append(out, a)
			if takesValue(app.Flags, a) && !strings.Contains(a, "=") && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
			i++
			continue
		}
		next := findCommand(cmds, a)
		if next == nil {
			break
		}
		if cmd == nil {
			firstCommand = len(out)
		}
		cmd = next
		out = append(out, a)
		cmds = next.Subcommands
		i++
		if len(cmds) == 0 {
			break
		}
	}
	if cmd == nil {
		return append(out, args[i:]...)
	}
	var flags, positional []string
	for i < len(args) {
		a := args[i]
		switch {
		case a == "--":
			positional = append(positional, args[i:]...)
			i = len(args)
			continue
		case strings.HasPrefix(a, "-") && a != "-" && !definesFlag(cmd.Flags, a) && definesFlag(app.Flags, a):
			global = append(global, a)
			if takesValue(app.Flags, a) && !strings.Contains(a, "=") && i+1 < len(args) {
				global = append(global, args[i+1])
				i++
			}
		case strings.HasPrefix(a, "-") && a != "-":
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && !strings.Contains(a, "=") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			positional = append(positional, a)
		}
		i++
	}
	// Global flags go before the first command word.
	head := append([]string{}, out[:firstCommand]...)
	head = append(head, global...)
	head = append(head, out[firstCommand:]...)
	return append(append(head, flags...), positional...)
}

// findFlag returns the flag of flags that arg (like --queue, -i or
// --queue=x) names, or nil.
func findFlag(flags []cli.Flag, arg string) cli.Flag {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// definesFlag reports whether arg names one of flags.
func definesFlag(flags []cli.Flag, arg string) bool { return findFlag(flags, arg) != nil }

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the flag arg (like --input or -i) is a known
// flag that takes a value.
func takesValue(flags []cli.Flag, arg string) bool {
	f := findFlag(flags, arg)
	_, isBool := f.(*cli.BoolFlag)
	return f != nil && !isBool
}
