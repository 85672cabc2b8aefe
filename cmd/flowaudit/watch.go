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

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:    "watch",
		summary: "audit continuously; log each new finding once, keep periodic snapshots",
		run:     runWatch,
	})
}

const watchExamples = `  # Until Ctrl-C, evaluating every minute, snapshots kept in /var/lib/flowaudit
  flowaudit watch -i eth0 -m utmstack@11 -r manager --site site.yaml --snapshot-dir /var/lib/flowaudit

  # JSON logs for a SIEM, one line per new finding
  flowaudit --log-format json watch -i eth0 -m usm -r sensor --site site.yaml

Findings that need a full window to be fair (missing-required, a short
window) are held back until --settle has passed.`

// watcher remembers which findings were already reported.
type watcher struct {
	e       *env
	af      *auditFlags
	res     *resolved
	settle  time.Duration
	seen    map[string]bool
	dir     string
	keep    int
	written []string
}

func runWatch(e *env, args []string) error {
	var (
		af       auditFlags
		lf       liveFlags
		interval time.Duration
		settle   time.Duration
		dir      string
		keep     int
	)
	fs := newFlagSet(e, "watch", "flowaudit watch --iface IFACE --matrix PRODUCT[@VERSION] --role ROLE [--site FILE] [flags]", watchExamples)
	af.register(fs)
	lf.register(fs, 0)
	fs.DurationVar(&interval, "interval", time.Minute, "how often to evaluate (and snapshot)")
	fs.DurationVar(&settle, "settle", 10*time.Minute, "hold back missing-required and short-window findings until this much was observed")
	fs.StringVar(&dir, "snapshot-dir", "", "write a snapshot here at every interval (atomic files)")
	fs.IntVar(&keep, "keep", 48, "snapshots to keep in --snapshot-dir (oldest removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if interval < time.Second {
		return fmt.Errorf("--interval %s: at least 1s", interval)
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
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("--snapshot-dir: %w", err)
		}
	}
	w := &watcher{e: e, af: &af, res: res, settle: settle, seen: map[string]bool{}, dir: dir, keep: keep}

	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, lf.duration)
	defer cancel()
	s, err := startLive(e, &lf)
	if err != nil {
		return err
	}
	defer s.close()
	e.log.Info("watching", zap.Strings("ifaces", lf.ifaces), zap.String("matrix", res.matrix.ProductName+" "+res.matrix.Version),
		zap.String("role", res.matrix.Role), zap.Duration("interval", interval))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// A last evaluation over the whole window, with nothing held back.
			n, err := w.evaluate(s, true)
			if err != nil {
				return err
			}
			e.log.Info("watch stopped", zap.Int("findings_reported", len(w.seen)))
			if n > 0 {
				return fmt.Errorf("%d findings reported: %w", len(w.seen), errFindings)
			}
			return nil
		case <-tick.C:
			if _, err := w.evaluate(s, false); err != nil {
				return err
			}
		}
	}
}

// evaluate audits everything recorded so far, logs findings not reported
// before and writes a snapshot. It returns how many findings at low or
// above have been reported in total.
func (w *watcher) evaluate(s *liveSession, final bool) (int, error) {
	snap, err := s.snapshot()
	if err != nil {
		return 0, err
	}
	if w.dir != "" {
		if err := w.save(snap); err != nil {
			w.e.log.Warn("snapshot not written", zap.Error(err))
		}
	}
	rep, err := audit.Run(snap, w.af.options(w.res))
	if err != nil {
		return 0, err
	}
	settled := final || snap.Window() >= w.settle
	for _, f := range rep.Findings {
		if w.seen[f.ID] {
			continue
		}
		if !settled && (f.Kind == audit.MissingRequired || f.ID == "audit-incomplete/short-window") {
			continue
		}
		w.seen[f.ID] = true
		logFinding(w.e.log, f)
	}
	n := 0
	for _, f := range rep.Findings {
		if w.seen[f.ID] && f.Severity >= audit.Low {
			n++
		}
	}
	return n, nil
}

func logFinding(log *zap.Logger, f audit.Finding) {
	fields := []zap.Field{zap.String("id", f.ID), zap.String("kind", string(f.Kind)), zap.String("severity", f.Severity.String()),
		zap.Uint64("packets", f.Evidence.Packets), zap.Int("peers", f.Evidence.Peers)}
	if f.Proto != "" {
		fields = append(fields, zap.String("service", f.Direction.String()+" "+f.Proto+"/"+f.Port))
	}
	if len(f.Evidence.TopPeers) > 0 {
		var ps []string
		for _, p := range f.Evidence.TopPeers {
			ps = append(ps, p.Addr.String())
		}
		fields = append(fields, zap.String("top_peers", strings.Join(ps, ",")))
	}
	if f.Rule != nil {
		fields = append(fields, zap.String("rule", f.Rule.ID))
	}
	if f.Severity >= audit.Low {
		log.Warn(f.Summary, fields...)
	} else {
		log.Info(f.Summary, fields...)
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
