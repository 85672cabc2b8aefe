// Command flowaudit audits the traffic of a security appliance against its
// vendor's documented port matrix, using XDP and TC counters in the kernel.
//
// Each subcommand lives in its own file and registers itself in commands;
// cli.go turns them into a github.com/spf13/cobra command tree.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Exit codes, as oscap uses them.
const (
	exitClean    = 0 // nothing at or above --fail-on
	exitError    = 1 // bad input, missing privileges, I/O failure
	exitFindings = 2 // findings at or above --fail-on
)

// errFindings is returned by a subcommand that ran fine but found problems.
var errFindings = errors.New("findings at or above the --fail-on severity")

// env is what a subcommand gets: its streams, a logger and the global flags.
type env struct {
	stdout io.Writer
	stderr io.Writer
	log    *zap.Logger
}

// runFunc runs a subcommand once its flags are parsed; args are the
// positional arguments left.
type runFunc func(e *env, args []string) error

// command is one subcommand. A subcommand declares its flags in setup, on
// the FlagSet the CLI parses, and returns the function that runs it (a
// closure over the flag variables); see docs/ARCHITECTURE.md.
type command struct {
	name    string
	summary string
	// usage is the one-line usage, "flowaudit NAME …" (printed with usage
	// errors and --help, and the man page's synopsis).
	usage string
	// examples end --help and the man page (and may say the exit codes).
	examples string
	// setup registers the flags on fs and returns the run function.
	setup func(fs *pflag.FlagSet) runFunc
	// config: the subcommand takes --config FILE (a section of that name
	// in the file sets its flags).
	config bool
	// subs are sub-subcommands (catalog list, show, validate); a command
	// with subs and no setup only dispatches.
	subs []*command

	// run is the old style, before cobra: the subcommand parses args
	// itself (newFlagSet). Still accepted so that such a subcommand works
	// as it is; flags declared that way are unknown to completion, man
	// pages and --config until it is moved to setup.
	run func(e *env, args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

func main() {
	// A closed stdout or stderr (flowaudit … 2>&1 | head) must give write
	// errors, not kill the process before it detaches and gives back a
	// replaced XDP program.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	return newCLI(stdout, stderr).execute(args)
}

func code(err error) int {
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return exitClean
	case errors.Is(err, errFindings):
		return exitFindings
	default:
		return exitError
	}
}

// usageError is a mistake on the command line (a missing or unknown flag,
// a bad value): printed with the one-line usage and a hint, never logged.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// usageErrorf is fmt.Errorf as a usageError.
func usageErrorf(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// plainError is an error printed as one plain line on stderr and not
// logged: there is no logger yet (a bad --config file, --log-level).
type plainError struct{ err error }

func (p plainError) Error() string { return p.err.Error() }
func (p plainError) Unwrap() error { return p.err }

// globalFlags pulls --log-format and --log-level out of args wherever they
// appear, so they work before or after the subcommand name. Only
// old-style subcommands (command.run) need it: cobra parses them for the
// others.
func globalFlags(args []string) (format, level string, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		for _, name := range []string{"--log-format", "--log-level"} {
			var val string
			switch {
			case a == name:
				if i+1 >= len(args) {
					return "", "", nil, fmt.Errorf("flag %s needs a value", name)
				}
				val = args[i+1]
				i++
			case strings.HasPrefix(a, name+"="):
				val = strings.TrimPrefix(a, name+"=")
			default:
				continue
			}
			if name == "--log-format" {
				format = val
			} else {
				level = val
			}
			goto next
		}
		rest = append(rest, a)
	next:
	}
	return format, level, rest, nil
}

func newLogger(w io.Writer, format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var enc zapcore.Encoder
	switch format {
	case "console":
		cfg := zap.NewDevelopmentEncoderConfig()
		cfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05")
		cfg.EncodeCaller = nil
		cfg.CallerKey = ""
		cfg.StacktraceKey = ""
		enc = zapcore.NewConsoleEncoder(cfg)
	case "json":
		cfg := zap.NewProductionEncoderConfig()
		cfg.EncodeTime = iso8601UTC
		enc = zapcore.NewJSONEncoder(cfg)
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}

// iso8601UTC writes log times as ISO 8601 / RFC 3339 in UTC with
// milliseconds: 2026-11-26T07:33:37.123Z.
func iso8601UTC(t time.Time, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(t.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
}

// seconds is a duration as a log field: a number of seconds, the unit in
// the field's name ("interval_seconds"), so that a log pipeline needs no
// parsing of "1m30s".
func seconds(name string, d time.Duration) zap.Field { return zap.Float64(name, d.Seconds()) }

// newFlagSet returns a FlagSet whose --help prints the summary, usage line,
// flags and examples of an old-style subcommand (command.run).
func newFlagSet(e *env, name, usageLine, examples string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		summary := ""
		if c := commands[name]; c != nil {
			summary = c.summary
		}
		fmt.Fprintf(e.stdout, "flowaudit %s: %s\n\nUsage: %s\n\nFlags:\n%s", name, summary, usageLine, fs.FlagUsages())
		if examples != "" {
			fmt.Fprintf(e.stdout, "\nExamples:\n%s\n", strings.TrimRight(examples, "\n"))
		}
	}
	return fs
}
