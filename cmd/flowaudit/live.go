package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/term"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// liveFlags are the flags of every subcommand that can record live.
type liveFlags struct {
	ifaces     []string
	duration   time.Duration
	maxFlows   uint32
	ingress    string
	tc         string
	replaceXDP bool
	refresh    time.Duration
}

func (l *liveFlags) register(fs *pflag.FlagSet, defaultDuration time.Duration) {
	fs.StringSliceVarP(&l.ifaces, "iface", "i", nil, "interface to record on (repeat or comma-separate for several)")
	fs.DurationVarP(&l.duration, "duration", "d", defaultDuration, "how long to record")
	fs.Uint32Var(&l.maxFlows, "max-flows", bpf.DefaultFlowEntries, "flow map size (entries); a full map is reported, never silent")
	fs.StringVar(&l.ingress, "ingress", "auto", "ingress hook: auto, xdp-native, xdp-generic or tc")
	fs.StringVar(&l.tc, "tc", "auto", "TC attach: auto (tcx, then clsact), tcx or clsact")
	fs.BoolVar(&l.replaceXDP, "replace-xdp", false, "replace another program's XDP program on the interface; it is put back when flowaudit stops (after a SIGKILL: by the next run, if /sys/fs/bpf is a bpffs)")
	fs.DurationVar(&l.refresh, "socket-refresh", 2*time.Second, "how often to re-read local listening sockets")
}

func (l *liveFlags) validate() error {
	if len(l.ifaces) == 0 {
		return errors.New("--iface is required")
	}
	if l.duration <= 0 {
		return fmt.Errorf("--duration %s: must be positive", l.duration)
	}
	if l.maxFlows == 0 {
		return errors.New("--max-flows must be at least 1")
	}
	if l.refresh < 100*time.Millisecond {
		return fmt.Errorf("--socket-refresh %s: at least 100ms", l.refresh)
	}
	return nil
}

func (l *liveFlags) attachOptions() bpf.AttachOptions {
	o := bpf.AttachOptions{ReplaceXDP: l.replaceXDP}
	if l.ingress != "auto" {
		o.Ingress = l.ingress
	}
	if l.tc != "auto" {
		o.TC = l.tc
	}
	return o
}

// signalContext is cancelled by SIGINT or SIGTERM: recording stops early
// and what was recorded so far is kept.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// isTerminal reports whether w is a terminal (progress lines and colour
// only go to terminals).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// liveSession is an open collector attached to interfaces, with its socket
// refresher running.
type liveSession struct {
	c     *bpf.Collector
	ref   *bpf.SocketRefresher
	start time.Time
	log   *zap.Logger
}

func startLive(e *env, lf *liveFlags) (*liveSession, error) {
	c, err := bpf.Open(bpf.Options{FlowEntries: lf.maxFlows, SocketsKnown: true, Logger: e.log})
	if err != nil {
		return nil, err
	}
	// Sockets first: from the first packet on, the programs rely on the
	// local socket set being complete.
	ref, err := c.StartSocketRefresh(lf.refresh)
	if err != nil {
		c.Close()
		return nil, err
	}
	for _, ifc := range lf.ifaces {
		if _, err := c.Attach(ifc, lf.attachOptions()); err != nil {
			ref.Stop()
			c.Close()
			return nil, err
		}
	}
	return &liveSession{c: c, ref: ref, start: time.Now(), log: e.log}, nil
}

// snapshot reads everything recorded so far.
func (s *liveSession) snapshot() (*snapshot.Snapshot, error) {
	return s.c.Snapshot(bpf.SnapshotOptions{ToolVersion: Version(), Start: s.start, Listening: s.ref.Seen()})
}

func (s *liveSession) close() {
	s.ref.Stop()
	if err := s.c.Close(); err != nil {
		s.log.Warn("detach", zap.Error(err))
	}
}

// recordLive records for lf.duration or until ctx ends, showing a progress
// line on progress (nil: none), and returns the snapshot.
func recordLive(ctx context.Context, e *env, lf *liveFlags, progress io.Writer) (*snapshot.Snapshot, error) {
	s, err := startLive(e, lf)
	if err != nil {
		return nil, err
	}
	defer s.close()
	e.log.Info("recording", zap.Strings("ifaces", lf.ifaces), zap.Duration("duration", lf.duration))

	deadline := time.NewTimer(lf.duration)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	p := newProgress(progress, lf.duration)
	interrupted := false
	var nextRead time.Time
loop:
	for {
		select {
		case <-deadline.C:
			break loop
		case <-ctx.Done():
			interrupted = true
			break loop
		case now := <-tick.C:
			// Reading a million flows takes over a second: keep the
			// progress line's reads under a tenth of the time.
			if progress != nil && !now.Before(nextRead) {
				t0 := time.Now()
				if r, err := s.c.ReadMaps(); err == nil {
					p.update(time.Since(s.start), r)
				}
				nextRead = t0.Add(10 * time.Since(t0))
			}
		}
	}
	p.done()
	snap, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	if interrupted {
		e.log.Warn("interrupted: the snapshot covers only part of the planned window",
			zap.Duration("recorded", snap.Window().Round(time.Second)), zap.Duration("planned", lf.duration))
	}
	logStats(e.log, snap)
	return snap, nil
}

// logStats logs the datapath's own counters, loudly when data was lost.
func logStats(log *zap.Logger, s *snapshot.Snapshot) {
	st := s.Stats
	fields := []zap.Field{zap.Int("flows", len(s.Flows)), zap.Uint32("capacity", st.FlowCapacity),
		zap.Uint64("packets_in", st.PacketsIngress), zap.Uint64("packets_out", st.PacketsEgress)}
	if st.Lossy() {
		log.Warn("flow map full: some packets were not counted; raise --max-flows",
			append(fields, zap.Uint64("insert_failed", st.FlowInsertFailed), zap.Uint64("evicted", st.FlowEvictions))...)
		return
	}
	log.Info("recorded", fields...)
}

// progress draws a one-line status on a terminal: elapsed / remaining,
// packets, flows and the newest flows.
type progress struct {
	w        io.Writer
	total    time.Duration
	seen     map[string]bool
	newest   []string
	lastLen  int
	anything bool
}

func newProgress(w io.Writer, total time.Duration) *progress {
	return &progress{w: w, total: total, seen: map[string]bool{}}
}

func (p *progress) update(elapsed time.Duration, r *bpf.Read) {
	if p.w == nil {
		return
	}
	var fresh []snapshot.Flow
	for _, f := range r.Flows {
		k := flowLabel(&f)
		if !p.seen[k] {
			p.seen[k] = true
			fresh = append(fresh, f)
		}
	}
	sort.Slice(fresh, func(i, j int) bool { return fresh[i].Packets() > fresh[j].Packets() })
	for _, f := range fresh {
		p.newest = append([]string{flowLabel(&f)}, p.newest...)
	}
	if len(p.newest) > 3 {
		p.newest = p.newest[:3]
	}
	remaining := p.total - elapsed
	if remaining < 0 {
		remaining = 0
	}
	line := fmt.Sprintf("%s elapsed, %s left | %d pkts in, %d out | %d flows",
		elapsed.Round(time.Second), remaining.Round(time.Second), r.Stats.PacketsIngress, r.Stats.PacketsEgress, len(r.Flows))
	if r.Stats.FlowInsertFailed > 0 {
		line += fmt.Sprintf(" | MAP FULL: %d lost", r.Stats.FlowInsertFailed)
	}
	if len(p.newest) > 0 {
		line += " | new: " + strings.Join(p.newest, ", ")
	}
	pad := ""
	if n := p.lastLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
	p.lastLen = len(line)
	p.anything = true
}

func (p *progress) done() {
	if p.w != nil && p.anything {
		fmt.Fprintln(p.w)
	}
}

// flowLabel is a short human name of a flow: "in tcp/22 ← 192.0.2.7".
func flowLabel(f *snapshot.Flow) string {
	arrow := map[snapshot.Direction]string{snapshot.Inbound: "in", snapshot.Outbound: "out", snapshot.Unknown: "?"}[f.Direction]
	return fmt.Sprintf("%s %s/%d %s", arrow, f.Proto, f.Port, f.Peer)
}

// inputFlags are the "--snapshot FILE | --iface … --duration D" input of
// audit and rules: read a snapshot, or record one live.
type inputFlags struct {
	liveFlags
	snapPath string
	saveSnap string
}

func (in *inputFlags) register(fs *pflag.FlagSet, what string) {
	in.liveFlags.register(fs, 10*time.Minute)
	fs.StringVarP(&in.snapPath, "snapshot", "s", "", what+" this snapshot file instead of recording")
	fs.StringVar(&in.saveSnap, "save-snapshot", "", "when recording live, also write the snapshot here")
}

// live reports whether the input is a live recording (--iface given).
func (in *inputFlags) live() bool { return len(in.ifaces) > 0 }

// check validates the combination; needed says whether some input is
// required at all.
func (in *inputFlags) check(needed bool, missing string) error {
	switch {
	case in.snapPath != "" && in.live():
		return errors.New("--snapshot and --iface exclude each other")
	case in.saveSnap != "" && !in.live():
		return errors.New("--save-snapshot only applies when recording live (--iface)")
	case needed && in.snapPath == "" && !in.live():
		return errors.New(missing)
	}
	if in.live() {
		return in.validate()
	}
	return nil
}

// load records live (progress on a terminal, Ctrl-C keeps what was
// recorded) or reads the snapshot file; nil when neither was asked for.
func (in *inputFlags) load(e *env) (*snapshot.Snapshot, error) {
	switch {
	case in.live():
		ctx, stop := signalContext()
		defer stop()
		var prog io.Writer
		if isTerminal(e.stderr) {
			prog = e.stderr
		}
		snap, err := recordLive(ctx, e, &in.liveFlags, prog)
		if err != nil {
			return nil, err
		}
		if in.saveSnap != "" {
			if err := snapshot.WriteFile(in.saveSnap, snap); err != nil {
				return nil, err
			}
		}
		return snap, nil
	case in.snapPath != "":
		return snapshot.ReadFile(in.snapPath)
	}
	return nil, nil
}

// writeOutput renders to stdout, or atomically to path (temp file +
// rename: a failed render leaves any old file intact) and logs where.
func writeOutput(e *env, path string, render func(io.Writer) error, logMsg string, fields ...zap.Field) error {
	if path == "" {
		var buf bytes.Buffer
		if err := render(&buf); err != nil {
			return err
		}
		_, err := e.stdout.Write(buf.Bytes())
		return err
	}
	if err := snapshot.AtomicWrite(path, render); err != nil {
		return err
	}
	abs, _ := filepath.Abs(path)
	e.log.Info(logMsg, append([]zap.Field{zap.String("file", abs)}, fields...)...)
	return nil
}
