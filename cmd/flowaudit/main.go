// Command flowaudit audits the traffic of a security appliance against its
// vendor's documented port matrix, using XDP and TC counters in the kernel.
//
// Each subcommand lives in its own file and registers itself in commands.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
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

// command is one subcommand.
type command struct {
	name    string
	summary string
	// run parses args itself (one pflag.FlagSet per subcommand) and runs.
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
	logFormat, logLevel, rest, err := globalFlags(args)
	if err != nil {
		fmt.Fprintf(stderr, "flowaudit: %v\n", err)
		return exitError
	}
	if len(rest) == 0 || rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		if len(rest) > 1 {
			if c, ok := commands[rest[1]]; ok {
				return code(c.run(&env{stdout: stdout, stderr: stderr, log: zap.NewNop()}, []string{"--help"}))
			}
		}
		usage(stdout)
		if len(rest) == 0 {
			return exitError
		}
		return exitClean
	}
	if rest[0] == "version" || rest[0] == "--version" {
		fmt.Fprintf(stdout, "flowaudit %s\n", Version())
		return exitClean
	}
	c, ok := commands[rest[0]]
	if !ok {
		fmt.Fprintf(stderr, "flowaudit: unknown command %q (see flowaudit help)\n", rest[0])
		return exitError
	}
	log, err := newLogger(stderr, logFormat, logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "flowaudit: %v\n", err)
		return exitError
	}
	defer log.Sync() //nolint:errcheck // stderr sync errors are meaningless
	err = c.run(&env{stdout: stdout, stderr: stderr, log: log}, rest[1:])
	if err != nil && !errors.Is(err, errFindings) && !errors.Is(err, pflag.ErrHelp) {
		log.Error(c.name+" failed", zap.Error(err))
	}
	return code(err)
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

// globalFlags pulls --log-format and --log-level out of args wherever they
// appear, so they work before or after the subcommand name.
func globalFlags(args []string) (format, level string, rest []string, err error) {
	format, level = "console", "info"
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

func usage(w io.Writer) {
	fmt.Fprintf(w, "flowaudit %s: audit an appliance's real traffic against its documented port matrix\n\n", Version())
	fmt.Fprintln(w, "Usage: flowaudit [--log-format console|json] [--log-level debug|info|warn|error] COMMAND [flags]")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'flowaudit COMMAND --help' for a command's flags and examples.")
}

// newFlagSet returns a FlagSet whose --help prints the summary, usage line,
// flags and examples of a subcommand.
func newFlagSet(e *env, name, usageLine, examples string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		c := commands[name]
		fmt.Fprintf(e.stdout, "flowaudit %s: %s\n\nUsage: %s\n\nFlags:\n%s", name, c.summary, usageLine, fs.FlagUsages())
		if examples != "" {
			fmt.Fprintf(e.stdout, "\nExamples:\n%s\n", strings.TrimRight(examples, "\n"))
		}
	}
	return fs
}
