package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/catalog"
)

// cli is one run of the command line: the cobra tree built from commands,
// its streams and the global flags.
type cli struct {
	stdout, stderr io.Writer
	root           *cobra.Command
	logFormat      string
	logLevel       string
	// failed is the command whose RunE or flag parsing failed (for the
	// usage line of a usage error).
	failed *cobra.Command
}

func newCLI(stdout, stderr io.Writer) *cli {
	c := &cli{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "flowaudit COMMAND",
		Short: "audit an appliance's real traffic against its documented port matrix",
		// Long is the man page's description (--help shows the command
		// list instead).
		Long:              manDescription,
		Version:           Version(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
		// Unknown subcommands are usage errors of our own (cobra's
		// would be untyped).
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			// Bare "flowaudit": the command list, and a failure.
			c.helpRoot(cmd, cmd.OutOrStdout())
			return errNoCommand
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("flowaudit {{.Version}}\n")
	c.logFormat, c.logLevel = "console", "info"
	root.PersistentFlags().Var(choiceValue{&c.logFormat, []string{"console", "json"}}, "log-format", "diagnostics format: console or json")
	root.PersistentFlags().Var(choiceValue{&c.logLevel, []string{"debug", "info", "warn", "error"}}, "log-level", "diagnostics level: debug, info, warn or error")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		c.failed = cmd
		return usageError{err}
	})
	_ = root.RegisterFlagCompletionFunc("log-format", flagCompletions["log-format"])
	_ = root.RegisterFlagCompletionFunc("log-level", flagCompletions["log-level"])
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) { c.help(cmd, cmd.OutOrStdout()) })
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		root.AddCommand(c.cobraCommand(commands[n], "flowaudit"))
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "flowaudit %s\n", Version())
			return err
		},
	})
	root.AddCommand(manCommand(root))
	// cobra's completion command, with a wrong shell a usage error (it
	// would print its help and exit 0).
	root.InitDefaultCompletionCmd()
	for _, s := range root.Commands() {
		if s.Name() == "completion" {
			s.Args = cobra.ArbitraryArgs
			s.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return usageErrorf("missing shell (bash, zsh, fish or powershell)")
				}
				return usageErrorf("unknown shell %q (want bash, zsh, fish or powershell)", args[0])
			}
		}
	}
	c.root = root
	return c
}

// cobraCommand turns a command into a cobra command under parent (the
// command path, "flowaudit" or "flowaudit catalog").
func (c *cli) cobraCommand(cmd *command, parent string) *cobra.Command {
	use := cmd.name
	if u := strings.TrimPrefix(cmd.usage, parent+" "); u != cmd.usage && strings.HasPrefix(u, cmd.name) {
		use = u
	}
	cc := &cobra.Command{
		Use:               use,
		Short:             cmd.summary,
		Example:           strings.TrimRight(cmd.examples, "\n"),
		DisableAutoGenTag: true,
	}
	switch {
	case cmd.run != nil:
		// Old style: the subcommand parses its own arguments.
		cc.DisableFlagParsing = true
		cc.RunE = func(cob *cobra.Command, args []string) error {
			format, level, rest, err := globalFlags(args)
			if err != nil {
				c.failed = cob
				return usageError{err}
			}
			if format != "" {
				c.logFormat = format
			}
			if level != "" {
				c.logLevel = level
			}
			for _, a := range rest {
				if a == "--" {
					break
				}
				if a == "-h" || a == "--help" {
					// Its FlagSet's usage prints the help.
					return cmd.run(&env{stdout: c.stdout, stderr: c.stderr, log: zap.NewNop()}, []string{"--help"})
				}
			}
			return c.withLogger(cob, func(e *env) error { return cmd.run(e, rest) })
		}
	case cmd.setup != nil:
		fs := cc.Flags()
		fs.SortFlags = false
		var config string
		if cmd.config {
			fs.StringVar(&config, "config", "", "read flags from this YAML file (its "+cmd.name+" section; flags given here override it; see deploy/flowaudit.yaml)")
		}
		runf := cmd.setup(fs)
		for name, complete := range flagCompletions {
			if fs.Lookup(name) != nil {
				_ = cc.RegisterFlagCompletionFunc(name, complete)
			}
		}
		cc.RunE = func(cob *cobra.Command, args []string) error {
			if config != "" {
				if err := applyConfigFile(config, c.root, cob); err != nil {
					return plainError{err}
				}
			}
			return c.withLogger(cob, func(e *env) error { return runf(e, args) })
		}
	default:
		// Only dispatches to its subcommands.
		cc.Args = cobra.ArbitraryArgs
		cc.RunE = func(cob *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf("missing subcommand (%s)", subNames(cmd))
			}
			return usageErrorf("unknown subcommand %q (want %s)", args[0], subNames(cmd))
		}
	}
	for _, s := range cmd.subs {
		cc.AddCommand(c.cobraCommand(s, parent+" "+cmd.name))
	}
	return cc
}

// words completes a flag with fixed words.
func words(w ...string) cobra.CompletionFunc {
	return cobra.FixedCompletions(w, cobra.ShellCompDirectiveNoFileComp)
}

// flagCompletions complete the values of the flags of these names, in
// whichever subcommand has them.
var flagCompletions = map[string]cobra.CompletionFunc{
	"format":     words(audit.Formats...),
	"fail-on":    words("info", "low", "medium", "high"),
	"ingress":    words("auto", "xdp-native", "xdp-generic", "tc"),
	"tc":         words("auto", "tcx", "clsact"),
	"log-format": words("console", "json"),
	"log-level":  words("debug", "info", "warn", "error"),
	// The interfaces of this network namespace.
	"iface": func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		ifs, err := net.Interfaces()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	},
	// product@version of the built-in catalog.
	"matrix": func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		cat, err := catalog.Builtin()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var refs []string
		for _, p := range cat.Products() {
			refs = append(refs, p.ID)
			for _, f := range p.Families() {
				refs = append(refs, p.ID+"@"+f.Latest.String())
			}
		}
		return refs, cobra.ShellCompDirectiveNoFileComp
	},
}

// choiceValue is a flag taking one of a few words.
type choiceValue struct {
	p       *string
	allowed []string
}

func (v choiceValue) String() string { return *v.p }
func (v choiceValue) Type() string   { return "string" }
func (v choiceValue) Set(s string) error {
	if !contains(v.allowed, s) {
		return fmt.Errorf("want %s", strings.Join(v.allowed, ", "))
	}
	*v.p = s
	return nil
}

func subNames(cmd *command) string {
	var n []string
	for _, s := range cmd.subs {
		n = append(n, s.name)
	}
	if len(n) > 1 {
		return strings.Join(n[:len(n)-1], ", ") + " or " + n[len(n)-1]
	}
	return strings.Join(n, "")
}

// withLogger builds the logger from --log-format and --log-level and runs
// f; an error f returns is logged, unless it is a usage error or means
// findings.
func (c *cli) withLogger(cob *cobra.Command, f func(e *env) error) error {
	log, err := newLogger(c.stderr, c.logFormat, c.logLevel)
	if err != nil {
		return usageError{err}
	}
	defer log.Sync() //nolint:errcheck // stderr sync errors are meaningless
	err = f(&env{stdout: c.stdout, stderr: c.stderr, log: log})
	if isFlagError(err) { // an old-style subcommand's own parsing
		err = usageError{err}
	}
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errFindings), errors.Is(err, pflag.ErrHelp):
	case errors.As(err, &ue):
		c.failed = cob
	default:
		log.Error(strings.TrimPrefix(cob.CommandPath(), "flowaudit ")+" failed", zap.Error(err))
		return loggedError{err}
	}
	return err
}

// errNoCommand: "flowaudit" alone prints the command list and fails.
var errNoCommand = errors.New("no command given")

// loggedError was already written to the log.
type loggedError struct{ err error }

func (l loggedError) Error() string { return l.err.Error() }
func (l loggedError) Unwrap() error { return l.err }

func isFlagError(err error) bool {
	var (
		ne *pflag.NotExistError
		ve *pflag.ValueRequiredError
		ie *pflag.InvalidValueError
		se *pflag.InvalidSyntaxError
	)
	return errors.As(err, &ne) || errors.As(err, &ve) || errors.As(err, &ie) || errors.As(err, &se)
}

// execute runs args and returns the exit code. Usage errors go to stderr
// as "flowaudit X: problem", the one-line usage and a hint; other errors
// not yet logged as one plain line.
func (c *cli) execute(args []string) int {
	c.root.SetArgs(args)
	cmd, err := c.root.ExecuteC()
	if err == nil {
		return exitClean
	}
	var (
		ue usageError
		le loggedError
	)
	switch {
	case errors.Is(err, errFindings), errors.Is(err, pflag.ErrHelp), errors.Is(err, errNoCommand):
	case errors.As(err, &le):
	case errors.As(err, &ue):
		if c.failed != nil {
			cmd = c.failed
		}
		fmt.Fprintf(c.stderr, "%s: %v\nUsage: %s\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, usageLine(cmd), cmd.CommandPath())
	default:
		fmt.Fprintf(c.stderr, "%s: %v\n", cmd.CommandPath(), err)
	}
	return code(err)
}

// usageLine is the one-line usage of cmd.
func usageLine(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return "flowaudit [--log-format console|json] [--log-level debug|info|warn|error] COMMAND [flags]"
	}
	if cmd.Runnable() && !cmd.HasAvailableSubCommands() {
		return cmd.UseLine()
	}
	return cmd.CommandPath() + " SUBCOMMAND [flags]"
}

// help writes the --help text of cmd: summary, usage, flags, examples.
func (c *cli) help(cmd *cobra.Command, w io.Writer) {
	if !cmd.HasParent() {
		c.helpRoot(cmd, w)
		return
	}
	fmt.Fprintf(w, "%s: %s\n\nUsage: %s\n", cmd.CommandPath(), cmd.Short, usageLine(cmd))
	if cmd.HasAvailableSubCommands() {
		fmt.Fprintln(w, "\nSubcommands:")
		for _, s := range cmd.Commands() {
			if s.IsAvailableCommand() {
				fmt.Fprintf(w, "  %-10s %s\n", s.Name(), s.Short)
			}
		}
		fmt.Fprintf(w, "\nRun '%s SUBCOMMAND --help' for its flags.\n", cmd.CommandPath())
	}
	// The subcommand's own flags in the order it declares them.
	own := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	own.SortFlags = false
	inherited := cmd.InheritedFlags()
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if inherited.Lookup(f.Name) == nil && cmd.PersistentFlags().Lookup(f.Name) == nil {
			own.AddFlag(f)
		}
	})
	if own.HasAvailableFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", own.FlagUsages())
	}
	if fl := cmd.InheritedFlags(); fl.HasAvailableFlags() {
		fmt.Fprintf(w, "\nGlobal flags:\n%s", fl.FlagUsages())
	}
	if cmd.Example != "" {
		fmt.Fprintf(w, "\nExamples:\n%s\n", cmd.Example)
	}
}

func (c *cli) helpRoot(cmd *cobra.Command, w io.Writer) {
	fmt.Fprintf(w, "flowaudit %s: %s\n\n", Version(), cmd.Short)
	fmt.Fprintf(w, "Usage: %s\n", usageLine(cmd))
	fmt.Fprintln(w, "\nCommands:")
	for _, s := range cmd.Commands() {
		if s.IsAvailableCommand() {
			fmt.Fprintf(w, "  %-10s %s\n", s.Name(), s.Short)
		}
	}
	fmt.Fprintf(w, "\nGlobal flags:\n%s", cmd.PersistentFlags().FlagUsages())
	fmt.Fprintln(w, "\nRun 'flowaudit COMMAND --help' for a command's flags and examples.")
	fmt.Fprintln(w, "Exit codes: 0 clean, 1 error, 2 findings (see each command).")
}
