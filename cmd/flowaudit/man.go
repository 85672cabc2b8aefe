package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// manCommand is the hidden "flowaudit gen-man DIR" that `make man` runs:
// one roff page per command (flowaudit.1, flowaudit-audit.1,
// flowaudit-catalog-show.1, flowaudit-completion-bash.1 …). The date is
// --date or SOURCE_DATE_EPOCH, never the clock, so that the pages are the
// same on every build of a commit.
func manCommand(root *cobra.Command) *cobra.Command {
	var date string
	cc := &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "write the man pages into DIR (make man)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t time.Time
			switch {
			case date != "":
				d, err := time.Parse("2006-01-02", date)
				if err != nil {
					return usageErrorf("--date %q: want YYYY-MM-DD", date)
				}
				t = d
			case os.Getenv("SOURCE_DATE_EPOCH") != "":
				sec, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
				if err != nil {
					return usageErrorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", os.Getenv("SOURCE_DATE_EPOCH"))
				}
				t = time.Unix(sec, 0).UTC()
			default:
				return usageErrorf("give --date YYYY-MM-DD or SOURCE_DATE_EPOCH (the pages must not depend on the clock)")
			}
			n, err := writeManPages(root, args[0], t)
			if err != nil {
				return plainError{err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d man pages written to %s\n", n, args[0])
			return nil
		},
	}
	cc.Flags().StringVar(&date, "date", "", "date in the pages' footer, YYYY-MM-DD (default: SOURCE_DATE_EPOCH)")
	return cc
}

var mdEscape = strings.NewReplacer("[", `\[`, "]", `\]`, "(", `\(`, ")", `\)`, "*", `\*`, "_", `\_`, "<", `\<`, ">", `\>`, "|", `\|`)

// writeManPages writes a page per available command under root into dir
// (each atomically) and returns how many.
func writeManPages(root *cobra.Command, dir string, date time.Time) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("man pages: %w", err)
	}
	root.InitDefaultCompletionCmd()
	root.InitDefaultVersionFlag()
	n := 0
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if c.HasParent() && (!c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() || c.Name() == "help") {
			return nil
		}
		// The usage line goes through Markdown: "[--site FILE] (…)"
		// would be a link.
		use := c.Use
		c.Use = strings.ReplaceAll(mdEscape.Replace(use), `\[flags\]`, "[flags]") // UseLine adds a second one otherwise
		defer func() { c.Use = use }()
		var buf bytes.Buffer
		hdr := &doc.GenManHeader{Title: strings.ToUpper(strings.ReplaceAll(c.CommandPath(), " ", "-")), Section: "1",
			Date: &date, Source: "flowaudit " + Version(), Manual: "flowaudit manual"}
		if err := doc.GenMan(c, hdr, &buf); err != nil {
			return fmt.Errorf("man page of %s: %w", c.CommandPath(), err)
		}
		name := filepath.Join(dir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		if err := snapshot.AtomicWrite(name, func(w io.Writer) error { _, err := w.Write(buf.Bytes()); return err }); err != nil {
			return err
		}
		n++
		for _, s := range c.Commands() {
			if err := walk(s); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return n, err
	}
	if n == 0 {
		return 0, errors.New("man pages: no command")
	}
	return n, nil
}

// manDescription is flowaudit(1)'s DESCRIPTION and the sections after it
// (Markdown, as cobra/doc writes the page).
const manDescription = `flowaudit records what a security appliance's interfaces really carry, with XDP and TC
programs counting flows in the kernel, and audits it against the vendor's documented port
matrix for the appliance's role: undocumented open ports and flows, peers outside their
zone, required ports that are closed or unused, scans and floods. **flowaudit audit** writes
a report (table, JSON, HTML, JUnit, SARIF); **flowaudit watch** runs as a sensor service,
with finding events and Prometheus metrics; **flowaudit rules** writes least-privilege
firewall rules for review.

Recording needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.

# EXIT STATUS
**0** no finding at or above **--fail-on** (or the command succeeded), **1** an error
(bad usage, bad input, missing privileges, I/O), **2** findings at or above **--fail-on**.

# ENVIRONMENT
**NO_COLOR**
: when set and not empty, the table report has no colour (colour is only used when standard output is a terminal).

**SOURCE_DATE_EPOCH**
: the date written in generated man pages (flowaudit gen-man, make man).

# FILES
**/etc/flowaudit/flowaudit.yaml**
: the configuration file given with **--config** to **audit**, **record** and **watch**: a section per command whose keys are the long flag names; flags on the command line win. An example is deploy/flowaudit.yaml in the sources.

**/var/lib/flowaudit**
: the usual **--state-dir** and **--snapshot-dir** of **watch**.`
