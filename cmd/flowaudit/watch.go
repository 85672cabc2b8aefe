package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/internal/metrics"
)

func init() {
	register(&command{
		name:     "watch",
		summary:  "audit continuously; log when findings open, change and resolve, keep periodic snapshots",
		usage:    "flowaudit watch --iface IFACE --matrix PRODUCT[@VERSION][#EDITION] --role ROLE [--site FILE] [flags]",
		examples: watchExamples,
		setup:    setupWatch,
		config:   true,
	})
}

const watchExamples = `  # Until Ctrl-C, evaluating every minute, snapshots kept in /var/lib/flowaudit;
  # what was reported survives a restart
  flowaudit watch -i eth0 -m utmstack@11 -r manager --site site.yaml \
    --snapshot-dir /var/lib/flowaudit --state-dir /var/lib/flowaudit

  # Findings as ECS JSON events to a file (reopened on SIGHUP, for logrotate),
  # Prometheus metrics on the loopback
  flowaudit watch -i eth0 -m usm -r sensor --site site.yaml \
    --events /var/log/flowaudit/events.json --metrics-addr 127.0.0.1:9750

  # Events to the local syslog, or a remote one over TCP (RFC 5424)
  flowaudit watch -i eth0 -m usm -r sensor --site site.yaml --events syslog://
  flowaudit watch -i eth0 -m usm -r sensor --site site.yaml --events syslog+tcp://siem.example:601

Findings that need a full window to be fair (missing-required, a short
window) are held back until --settle has passed; a finding absent for a
whole --settle is resolved. docs/WATCH.md describes the events and
metrics, docs/EVENTS.md the event format. Without --events, events are
log lines. SIGHUP reopens an --events file; without one it stops the
watch like SIGINT and SIGTERM.
Exit codes: 0 no finding at low or above was open during the run, 2 some
was, 1 error.`

// watcher evaluates the recording at every interval and reports what
// changed.
type watcher struct {
	e         *env
	af        *auditFlags
	res       *resolved
	settle    time.Duration
	now       func() time.Time
	started   time.Time
	t         *tracker
	scope     watchScope
	statePath string
	dir       string
	keep      int
	written   []string
	events    map[eventKind]int
	out       *watchOutputs
}

// watchFlags are watch's own output flags.
type watchFlags struct {
	interval     time.Duration
	events       string
	metricsAddr  string
	metricsPorts int
	started      time.Time
}

func setupWatch(fs *pflag.FlagSet) runFunc {
	var (
		af       auditFlags
		lf       liveFlags
		wf       watchFlags
		settle   time.Duration
		dir      string
		stateDir string
		keep     int
	)
	af.register(fs)
	lf.register(fs, 0)
	fs.DurationVar(&wf.interval, "interval", time.Minute, "how often to evaluate (and snapshot)")
	fs.DurationVar(&lf.window, "window", time.Hour, "judge the last window of traffic (0: everything since the start); a finding whose traffic left the window can resolve")
	fs.DurationVar(&settle, "settle", 10*time.Minute, "hold back missing-required and short-window findings until this much was observed; resolve a finding absent this long")
	fs.StringVar(&dir, "snapshot-dir", "", "write a snapshot here at every interval (atomic files)")
	fs.IntVar(&keep, "keep", 48, "snapshots to keep in --snapshot-dir (oldest removed)")
	fs.StringVar(&stateDir, "state-dir", "", "keep the open findings here ("+stateFileName+"), so that a restart does not report them again")
	fs.StringVar(&wf.events, "events", "", "write finding events as ECS JSON lines (docs/EVENTS.md) to FILE (appended; reopened on SIGHUP), - (stdout) or syslog://[HOST:PORT|/PATH] (RFC 5424; syslog+tcp://HOST:PORT for TCP)")
	fs.StringVar(&wf.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9750; off by default)")
	fs.IntVar(&wf.metricsPorts, "metrics-ports", metrics.DefaultExtraPorts, "undocumented service ports that get a metrics label of their own (first seen answered); the others count as \"other\"")
	return func(e *env, args []string) (err error) {
		if len(args) > 0 {
			return usageErrorf("unexpected argument %q", args[0])
		}
		interval := wf.interval
		if interval < time.Second {
			return usageErrorf("--interval %s: at least 1s", interval)
		}
		if wf.metricsPorts < 0 {
			return usageErrorf("--metrics-ports %d: must not be negative", wf.metricsPorts)
		}
		if settle < 0 {
			return usageErrorf("--settle %s: must not be negative", settle)
		}
		if lf.window < 0 || (lf.window > 0 && lf.window < interval) {
			return usageErrorf("--window %s: 0 (everything) or at least --interval (%s)", lf.window, interval)
		}
		if keep < 1 {
			return usageErrorf("--keep must be at least 1")
		}
		if lf.duration == 0 {
			lf.duration = 100 * 365 * 24 * time.Hour // until interrupted
		}
		if err := lf.validate(); err != nil {
			return err
		}
		res, err := af.mf.resolve()
		if err != nil {
			return err
		}
		warnNoSite(e, res)
		// Everything that can fail on the output side fails before anything
		// is attached.
		if err := checkWritableDir("--snapshot-dir", dir); err != nil {
			return err
		}
		if err := checkWritableDir("--state-dir", stateDir); err != nil {
			return err
		}
		w := &watcher{e: e, af: &af, res: res, settle: settle, now: time.Now, t: newTracker(settle), dir: dir, keep: keep,
			events: map[eventKind]int{},
			scope:  newScope(res.matrix.Product, res.matrix.Version, res.matrix.Role, res.matrix.Conditions, lf.ifaces)}
		w.scope.Edition = res.matrix.Edition
		// Restored findings count their absence from the start of the watch.
		w.started = w.now()
		wf.started = w.started
		out, err := openWatchOutputs(e, res, &lf, &wf)
		if err != nil {
			return err
		}
		w.out = out
		defer func() {
			if cerr := out.close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
		if stateDir != "" {
			unlock, err := lockStateDir(stateDir)
			if err != nil {
				return err
			}
			defer unlock()
			w.statePath = filepath.Join(stateDir, stateFileName)
			if err := restoreState(e.log, w.statePath, w.scope, w.t, w.started); err != nil {
				return err
			}
		}

		var onHUP func()
		if out.sink != nil && wf.events != "-" && !strings.HasPrefix(wf.events, "syslog") {
			onHUP = out.reopen
		}
		ctx, stop := signalContextHUP(onHUP)
		defer stop()
		s, err := startLive(e, &lf)
		if err != nil {
			return err
		}
		// --duration counts from the attach, as record's does: loading and
		// attaching can take seconds on a busy host, and must not eat the
		// watched time (the whole of a short watch, once, in a test).
		ctx, cancel := context.WithTimeout(ctx, lf.duration)
		defer cancel()
		defer func() {
			if cerr := s.close(); cerr != nil {
				err = errors.Join(cerr, err)
			}
		}()
		out.live.Store(s)
		defer out.live.Store(nil) // before s.close: scrapes stop reading the collector
		fields := []zap.Field{zap.Strings("ifaces", lf.ifaces), zap.String("matrix", res.matrix.ProductName+" "+res.matrix.Version),
			zap.String("role", res.matrix.Role), seconds("interval_seconds", interval), seconds("window_seconds", lf.window),
			seconds("settle_seconds", settle)}
		if out.sink != nil {
			fields = append(fields, zap.String("events", out.sink.String()))
		}
		e.log.Info("watching", fields...)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				// A last evaluation over the whole window, with nothing held back.
				if err := w.evaluate(s, true); err != nil {
					return err
				}
				n := len(w.t.alerting)
				e.log.Info("watch stopped", zap.Int("open", w.t.openCount()), zap.Int("alerting", n),
					zap.Int("opened", w.events[eventOpened]), zap.Int("escalated", w.events[eventEscalated]),
					zap.Int("de_escalated", w.events[eventDeescalated]), zap.Int("resolved", w.events[eventResolved]))
				if n > 0 {
					return fmt.Errorf("%d findings at low or above were open during the run: %w", n, errFindings)
				}
				return nil
			case <-s.failed():
				return fmt.Errorf("moving counts out of the kernel: %w", s.moverErr)
			case <-tick.C:
				if err := w.evaluate(s, false); err != nil {
					return err
				}
			}
		}
	}
}

// evaluate audits the recording, reports what changed since the last
// evaluation, writes a snapshot and, when something changed or at the end,
// the state file.
func (w *watcher) evaluate(s *liveSession, final bool) error {
	start := w.now()
	snap, err := s.snapshot()
	if err != nil {
		return err
	}
	if w.dir != "" {
		if err := w.save(snap); err != nil {
			w.e.log.Warn("snapshot not written", zap.Error(err))
		}
	}
	rep, err := audit.Run(snap, w.af.options(w.res))
	if err != nil {
		return err
	}
	now := w.now()
	// Settled by the time watched, not by the snapshot's window: the
	// evaluated window may be shorter than the watch.
	settled := final || now.Sub(w.started) >= w.settle
	evs := w.t.observe(now, rep.Findings, settled)
	for _, ev := range evs {
		w.events[ev.Event]++
		w.out.event(ev)
	}
	if w.statePath != "" && (len(evs) > 0 || final) {
		if err := saveState(w.statePath, w.scope, w.t, now); err != nil {
			// Not fatal: a lost state file means a restart reports
			// again, never that something goes unreported.
			w.e.log.Warn("watch state not written: a restart will report open findings again", zap.Error(err))
		}
	}
	w.out.evaluated(&evaluation{start: start, end: w.now(), open: w.t.openFindings()})
	return nil
}

// logEvent is the log sink of watch events: one line per event with
// stable field names (docs/WATCH.md). With debug set (the events went to
// --events), the line is at debug level.
func logEvent(log *zap.Logger, ev watchEvent, debug bool) {
	f := &ev.Finding
	fields := []zap.Field{zap.String("event", string(ev.Event)), zap.String("id", f.ID), zap.String("kind", string(f.Kind)),
		zap.String("severity", f.Severity.String())}
	if ev.Previous != nil {
		fields = append(fields, zap.String("previous_id", ev.Previous.ID), zap.String("previous_kind", string(ev.Previous.Kind)),
			zap.String("previous_severity", ev.Previous.Severity.String()))
	}
	if f.Proto != "" {
		fields = append(fields, zap.String("service", f.Direction.String()+" "+f.Proto+"/"+f.Port))
	}
	if f.Rule != nil {
		fields = append(fields, zap.String("rule", f.Rule.ID))
	}
	fields = append(fields, zap.Uint64("packets", f.Evidence.Packets), zap.Int("peers", f.Evidence.Peers))
	if len(f.Evidence.TopPeers) > 0 {
		ps := make([]string, len(f.Evidence.TopPeers))
		for i, p := range f.Evidence.TopPeers {
			ps[i] = p.String()
		}
		fields = append(fields, zap.Strings("top_peers", ps))
	}
	stamp := func(name string, t time.Time) {
		if !t.IsZero() {
			fields = append(fields, zap.String(name, t.UTC().Format(time.RFC3339Nano)))
		}
	}
	stamp("first_seen", f.Evidence.FirstSeen)
	stamp("last_seen", f.Evidence.LastSeen)
	stamp("first_reported", ev.FirstReported)
	stamp("last_present", ev.LastPresent)
	fields = append(fields, zap.String("summary", f.Summary))
	msg := "finding " + string(ev.Event)
	switch {
	case debug:
		log.Debug(msg, fields...)
	case ev.Event != eventResolved && f.Severity >= audit.Low:
		log.Warn(msg, fields...)
	default:
		log.Info(msg, fields...)
	}
}

// save writes the snapshot into the directory and prunes old ones.
func (w *watcher) save(snap *snapshot.Snapshot) error {
	name := filepath.Join(w.dir, "flowaudit-"+snap.End.UTC().Format("20060102T150405Z")+".json")
	if err := snapshot.WriteFile(name, snap); err != nil {
		return err
	}
	w.written = append(w.written, name)
	sort.Strings(w.written)
	for len(w.written) > w.keep {
		if err := os.Remove(w.written[0]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		w.written = w.written[1:]
	}
	return nil
}
