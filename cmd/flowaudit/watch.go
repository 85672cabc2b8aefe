package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:    "watch",
		summary: "audit continuously; log when findings open, change and resolve, keep periodic snapshots",
		run:     runWatch,
	})
}

const watchExamples = `  # Until Ctrl-C, evaluating every minute, snapshots kept in /var/lib/flowaudit;
  # what was reported survives a restart
  flowaudit watch -i eth0 -m utmstack@11 -r manager --site site.yaml \
    --snapshot-dir /var/lib/flowaudit --state-dir /var/lib/flowaudit

  # JSON logs for a SIEM, one line per event (opened, escalated, de-escalated, resolved)
  flowaudit --log-format json watch -i eth0 -m usm -r sensor --site site.yaml

Findings that need a full window to be fair (missing-required, a short
window) are held back until --settle has passed; a finding absent for a
whole --settle is resolved. docs/WATCH.md describes the events.
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
}

func runWatch(e *env, args []string) (err error) {
	var (
		af       auditFlags
		lf       liveFlags
		interval time.Duration
		settle   time.Duration
		dir      string
		stateDir string
		keep     int
	)
	fs := newFlagSet(e, "watch", "flowaudit watch --iface IFACE --matrix PRODUCT[@VERSION] --role ROLE [--site FILE] [flags]", watchExamples)
	af.register(fs)
	lf.register(fs, 0)
	fs.DurationVar(&interval, "interval", time.Minute, "how often to evaluate (and snapshot)")
	fs.DurationVar(&lf.window, "window", time.Hour, "judge the last window of traffic (0: everything since the start); a finding whose traffic left the window can resolve")
	fs.DurationVar(&settle, "settle", 10*time.Minute, "hold back missing-required and short-window findings until this much was observed; resolve a finding absent this long")
	fs.StringVar(&dir, "snapshot-dir", "", "write a snapshot here at every interval (atomic files)")
	fs.IntVar(&keep, "keep", 48, "snapshots to keep in --snapshot-dir (oldest removed)")
	fs.StringVar(&stateDir, "state-dir", "", "keep the open findings here ("+stateFileName+"), so that a restart does not report them again")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if interval < time.Second {
		return fmt.Errorf("--interval %s: at least 1s", interval)
	}
	if settle < 0 {
		return fmt.Errorf("--settle %s: must not be negative", settle)
	}
	if lf.window < 0 || (lf.window > 0 && lf.window < interval) {
		return fmt.Errorf("--window %s: 0 (everything) or at least --interval (%s)", lf.window, interval)
	}
	if keep < 1 {
		return errors.New("--keep must be at least 1")
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
	// Restored findings count their absence from the start of the watch.
	w.started = w.now()
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

	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, lf.duration)
	defer cancel()
	s, err := startLive(e, &lf)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := s.close(); cerr != nil {
			err = errors.Join(cerr, err)
		}
	}()
	e.log.Info("watching", zap.Strings("ifaces", lf.ifaces), zap.String("matrix", res.matrix.ProductName+" "+res.matrix.Version),
		zap.String("role", res.matrix.Role), zap.Duration("interval", interval), zap.Duration("window", lf.window),
		zap.Duration("settle", settle))
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

// evaluate audits the recording, reports what changed since the last
// evaluation, writes a snapshot and, when something changed or at the end,
// the state file.
func (w *watcher) evaluate(s *liveSession, final bool) error {
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
		logEvent(w.e.log, ev)
	}
	if w.statePath != "" && (len(evs) > 0 || final) {
		if err := saveState(w.statePath, w.scope, w.t, now); err != nil {
			// Not fatal: a lost state file means a restart reports
			// again, never that something goes unreported.
			w.e.log.Warn("watch state not written: a restart will report open findings again", zap.Error(err))
		}
	}
	return nil
}

// logEvent is the log sink of watch events: one line per event with
// stable field names (docs/WATCH.md).
func logEvent(log *zap.Logger, ev watchEvent) {
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
	if ev.Event != eventResolved && f.Severity >= audit.Low {
		log.Warn(msg, fields...)
	} else {
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
