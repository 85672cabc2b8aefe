package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

// liveFlags are the flags of every subcommand that can record live.
type liveFlags struct {
	ifaces       []string
	duration     time.Duration
	maxFlows     uint32
	maxOverflow  uint32
	flowBudget   int
	moveInterval time.Duration
	moveFill     int
	ingress      string
	tc           string
	replaceXDP   bool
	refresh      time.Duration
	logProgress  time.Duration
	// window: only watch sets it (--window): judge the last window of
	// traffic rather than everything since the start.
	window time.Duration
	// onMove: only watch sets it (--metrics-addr): sees every entry moved
	// out of the kernel (bpf.Options.OnMove).
	onMove func(*bpf.MovedFlow)
}

// defaultFlowBudget bounds the recorder's memory, all window buckets
// together. Measured by `make bench` (BENCHMARKS.md, part 6): an entry
// held costs 350–650 B, but evaluating a full budget (conversion, audit,
// snapshot file, garbage-collector slack) peaks at 1.2–2.4 KiB per entry
// (the help says 3): a watch that saw a million distinct peers peaked at
// 190–235 MiB with this default, where 262 144 reached 600–790 MiB.
const defaultFlowBudget = 65536

func (l *liveFlags) register(fs *pflag.FlagSet, defaultDuration time.Duration) {
	fs.StringSliceVarP(&l.ifaces, "iface", "i", nil, "interface to record on (repeat or comma-separate for several)")
	fs.DurationVarP(&l.duration, "duration", "d", defaultDuration, "how long to record")
	fs.Uint32Var(&l.maxFlows, "max-flows", bpf.DefaultFlowEntries, "kernel flow map size (entries, two generations); when full, packets are still counted per service without their peer")
	fs.Uint32Var(&l.maxOverflow, "max-overflow", bpf.DefaultOverflowEntries, "kernel per-service overflow map size (entries); packets are lost only when it is full too (reported)")
	fs.IntVar(&l.flowBudget, "flow-budget", defaultFlowBudget, "memory budget in flow entries, the whole window together (~350–650 B each held, up to ~3 KiB each at the peak of an evaluation); beyond it the busiest services' peers fold into /24 and /48 prefixes or one \"other peers\" entry (reported)")
	fs.DurationVar(&l.moveInterval, "move-interval", 10*time.Second, "how often counts move from the kernel maps into memory")
	fs.IntVar(&l.moveFill, "move-fill", 50, "also move as soon as the kernel flow map is this % full (checked 4 times a second; 0: only every --move-interval)")
	fs.StringVar(&l.ingress, "ingress", "auto", "ingress hook: auto, xdp-native, xdp-generic or tc")
	fs.StringVar(&l.tc, "tc", "auto", "TC attach: auto (tcx, then clsact), tcx or clsact")
	fs.BoolVar(&l.replaceXDP, "replace-xdp", false, "replace another program's XDP program on the interface; it is put back when flowaudit stops (after a SIGKILL: by the next run, if /sys/fs/bpf is a bpffs)")
	fs.DurationVar(&l.refresh, "socket-refresh", 2*time.Second, "how often to re-read local listening sockets")
	fs.DurationVar(&l.logProgress, "log-progress", time.Minute, "when stderr is not a terminal, log the recording's progress at this interval (0: never)")
}

func (l *liveFlags) validate() error {
	if len(l.ifaces) == 0 {
		return usageErrorf("--iface is required")
	}
	if l.duration <= 0 {
		return usageErrorf("--duration %s: must be positive", l.duration)
	}
	if l.maxFlows == 0 {
		return usageErrorf("--max-flows must be at least 1")
	}
	if l.maxOverflow == 0 {
		return usageErrorf("--max-overflow must be at least 1")
	}
	if l.flowBudget < 1024 {
		return usageErrorf("--flow-budget %d: at least 1024 entries", l.flowBudget)
	}
	if l.moveInterval < 10*time.Millisecond {
		return usageErrorf("--move-interval %s: at least 10ms", l.moveInterval)
	}
	if l.moveFill < 0 || l.moveFill > 100 {
		return usageErrorf("--move-fill %d: a percentage, 0 to 100", l.moveFill)
	}
	if l.refresh < 100*time.Millisecond {
		return usageErrorf("--socket-refresh %s: at least 100ms", l.refresh)
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

// stopSignal is the cause of a context cancelled by SIGINT, SIGTERM or
// SIGHUP.
type stopSignal struct{ sig syscall.Signal }

func (s stopSignal) Error() string { return s.name() + " received" }

// name is the signal's conventional name: "SIGINT", "SIGTERM".
func (s stopSignal) name() string { return unix.SignalName(s.sig) }

// signalContext is cancelled by SIGINT, SIGTERM or SIGHUP, with a
// stopSignal as its cause: recording stops early, what was recorded so far
// is kept and marked as interrupted.
func signalContext() (context.Context, context.CancelFunc) { return signalContextHUP(nil) }

// signalContextHUP is signalContext, except that when onHUP is set SIGHUP
// calls it (watch --events FILE reopens the file, the logrotate
// convention) instead of stopping.
func signalContextHUP(onHUP func()) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	// A hang-up (the ssh session or terminal went away) stops cleanly too,
	// unless SIGHUP is ignored (nohup): then it must stay ignored. When
	// SIGHUP means "reopen", it is caught even under nohup: logrotate
	// needs it, and a hang-up then only reopens the file.
	if onHUP != nil || !signal.Ignored(syscall.SIGHUP) {
		signal.Notify(ch, syscall.SIGHUP)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-ch:
				if sig == syscall.SIGHUP && onHUP != nil {
					onHUP()
					continue
				}
				cancel(stopSignal{sig.(syscall.Signal)})
				return
			case <-done:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(context.Canceled)
	}
}

// interruption describes why ctx ended early: the signal, or the error
// that stopped the recording.
func interruption(ctx context.Context, at, planned time.Time) *snapshot.Interruption {
	cause := context.Cause(ctx)
	var sig stopSignal
	if errors.As(cause, &sig) {
		return &snapshot.Interruption{Signal: sig.name(), At: at.UTC(), PlannedEnd: planned.UTC()}
	}
	if cause == nil {
		cause = ctx.Err()
	}
	return &snapshot.Interruption{Signal: "error", At: at.UTC(), PlannedEnd: planned.UTC(), Reason: cause.Error()}
}

// isTerminal reports whether w is a terminal (progress lines and colour
// only go to terminals).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// liveSession is an open collector attached to interfaces, with its socket
// refresher and its mover running.
type liveSession struct {
	c     *bpf.Collector
	ref   *bpf.SocketRefresher
	start time.Time
	log   *zap.Logger
	lf    *liveFlags

	stopMover context.CancelFunc
	moverDone chan struct{}
	moverErr  error // set before moverDone closes
}

func startLive(e *env, lf *liveFlags) (*liveSession, error) {
	c, err := bpf.Open(bpf.Options{FlowEntries: lf.maxFlows, OverflowEntries: lf.maxOverflow, FlowBudget: lf.flowBudget,
		Window: lf.window, SocketsKnown: true, Logger: e.log, OnMove: lf.onMove})
	if err != nil {
		return nil, err
	}
	// Sockets first: from the first packet on, the programs rely on the
	// local socket set being complete.
	ref, err := c.StartSocketRefresh(lf.refresh)
	if err != nil {
		return nil, errors.Join(err, c.Close())
	}
	for _, ifc := range lf.ifaces {
		if _, err := c.Attach(ifc, lf.attachOptions()); err != nil {
			if errors.Is(err, bpf.ErrInterfaceNotFound) {
				err = withInterfaces(err)
			}
			ref.Stop()
			// Close detaches what was attached and gives back a replaced
			// XDP program: its failure must not go unseen.
			return nil, errors.Join(err, c.Close())
		}
	}
	s := &liveSession{c: c, ref: ref, start: time.Now(), log: e.log, lf: lf, moverDone: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopMover = cancel
	go s.mover(ctx)
	return s, nil
}

// withInterfaces adds to err (an --iface that does not exist) the names
// of the interfaces that do, in this network namespace.
func withInterfaces(err error) error {
	ifs, lerr := net.Interfaces()
	if lerr != nil {
		return fmt.Errorf("%w (listing the interfaces: %v)", err, lerr)
	}
	names := make([]string, len(ifs))
	for i, ifc := range ifs {
		names[i] = ifc.Name
	}
	return fmt.Errorf("%w (interfaces in this network namespace: %s)", err, strings.Join(names, ", "))
}

// mover moves the kernel's counts into memory every --move-interval, and
// early whenever the active generation is --move-fill full, so a long run
// never fills the kernel map. Folds caused by the memory budget are logged as
// they happen. It stops on the first error (moverErr).
func (s *liveSession) mover(ctx context.Context) {
	defer close(s.moverDone)
	tick := time.NewTicker(min(250*time.Millisecond, s.lf.moveInterval))
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if now.Sub(last) < s.lf.moveInterval {
				n, err := s.c.Counters()
				if err != nil {
					s.moverErr = err
					return
				}
				if s.lf.moveFill == 0 || n.ActiveEntries*100 < uint64(n.FlowCapacity)*uint64(s.lf.moveFill) {
					continue
				}
			}
			res, err := s.c.Move()
			if err != nil {
				s.moverErr = err
				return
			}
			last = now
			for _, f := range res.Folded {
				s.log.Warn("memory budget reached: peers folded (see --flow-budget)", zap.String("service",
					fmt.Sprintf("%s %s/%d", f.Direction, f.Proto, f.Port)), zap.String("level", f.Level),
					zap.Int("entries_merged", f.Entries), zap.Int("budget_entries", s.lf.flowBudget))
			}
		}
	}
}

// failed returns the mover's error once it has stopped on one.
func (s *liveSession) failed() <-chan struct{} { return s.moverDone }

// snapshot moves and reads everything recorded so far (with a window:
// the last window of it, and the sockets seen in it).
func (s *liveSession) snapshot() (*snapshot.Snapshot, error) {
	return s.c.Snapshot(bpf.SnapshotOptions{ToolVersion: Version(), Start: s.start, Sockets: s.ref})
}

// close stops the mover and the socket refresher, detaches and gives back
// what --replace-xdp replaced. Its error (a program not restored) must
// fail the command.
func (s *liveSession) close() error {
	s.stopMover()
	<-s.moverDone
	s.ref.Stop()
	if err := s.c.Close(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return nil
}

// recordOptions say where a recording reports progress and checkpoints.
type recordOptions struct {
	// progress is a terminal for the one-line status (nil: none).
	progress io.Writer
	// logEvery logs progress at this interval when there is no terminal
	// (0: never).
	logEvery time.Duration
	// checkpoint writes the snapshot so far to checkpointPath every
	// interval (0 or no path: never).
	checkpoint     time.Duration
	checkpointPath string
}

// recordLive records for lf.duration or until ctx ends and returns the
// snapshot. A signal or a failure of the mover ends the recording early:
// what was recorded is kept and marked interrupted. Progress never reads
// the flow maps, so it never freezes however full they are. If detaching
// fails afterwards, the snapshot is returned together with the error: the
// caller saves it, then fails.
func recordLive(ctx context.Context, e *env, lf *liveFlags, ro recordOptions) (snap *snapshot.Snapshot, err error) {
	s, err := startLive(e, lf)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	planned := s.start.Add(lf.duration)
	e.log.Info("recording", zap.Strings("ifaces", lf.ifaces), seconds("duration_seconds", lf.duration))

	deadline := time.NewTimer(lf.duration)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var checkpoints <-chan time.Time
	if ro.checkpoint > 0 && ro.checkpointPath != "" {
		t := time.NewTicker(ro.checkpoint)
		defer t.Stop()
		checkpoints = t.C
	}
	p := newProgress(ro.progress, lf.duration)
	lastLog := time.Now()
	var stopped *snapshot.Interruption
loop:
	for {
		select {
		case <-deadline.C:
			break loop
		case <-ctx.Done():
			stopped = interruption(ctx, time.Now(), planned)
			break loop
		case <-s.failed():
			stopped = &snapshot.Interruption{Signal: "error", At: time.Now().UTC(), PlannedEnd: planned.UTC(),
				Reason: fmt.Sprintf("moving counts out of the kernel: %v", s.moverErr)}
			e.log.Error("recording stopped early", zap.Error(s.moverErr))
			break loop
		case <-checkpoints:
			snap, err := s.snapshot()
			if err == nil {
				snap.Checkpoint = true
				err = snapshot.WriteFile(ro.checkpointPath, snap)
			}
			if err != nil {
				e.log.Warn("checkpoint not written", zap.Error(err))
				continue
			}
			e.log.Info("checkpoint written", zap.String("file", ro.checkpointPath), zap.Int("flows", len(snap.Flows)),
				seconds("window_seconds", snap.Window().Round(time.Second)))
		case now := <-tick.C:
			n, err := s.c.Counters()
			if err != nil {
				continue
			}
			elapsed := now.Sub(s.start)
			p.update(elapsed, n)
			if ro.progress == nil && ro.logEvery > 0 && now.Sub(lastLog) >= ro.logEvery {
				lastLog = now
				logProgress(e.log, elapsed, lf.duration, n)
			}
		}
	}
	p.done()
	snap, err = s.snapshot()
	if err != nil {
		return nil, err
	}
	if stopped != nil {
		snap.Interrupted = stopped
		e.log.Warn("interrupted: the snapshot covers only part of the planned window", zap.String("by", stopped.Signal),
			seconds("recorded_seconds", snap.Window().Round(time.Second)), seconds("planned_seconds", lf.duration))
	}
	logStats(e.log, snap)
	return snap, nil
}

// logProgress is the progress line for logs (no terminal): the same
// figures as fields.
func logProgress(log *zap.Logger, elapsed, total time.Duration, n bpf.Counters) {
	log.Info("recording progress", seconds("elapsed_seconds", elapsed.Round(time.Second)),
		seconds("left_seconds", max(total-elapsed, 0).Round(time.Second)),
		zap.Uint64("packets_in", n.PacketsIngress), zap.Uint64("packets_out", n.PacketsEgress),
		zap.Int("flows", n.Accumulated), zap.Uint64("moves", n.Moves),
		zap.Uint64("packets_without_peer", n.FlowInsertFailed), zap.Uint64("packets_lost", n.OverflowInsertFailed))
}

// logStats logs the datapath's own counters, loudly when data was lost.
func logStats(log *zap.Logger, s *snapshot.Snapshot) {
	st := s.Stats
	fields := []zap.Field{zap.Int("flows", len(s.Flows)), zap.Uint32("capacity", st.FlowCapacity),
		zap.Uint64("packets_in", st.PacketsIngress), zap.Uint64("packets_out", st.PacketsEgress)}
	fields = append(fields, zap.Uint64("moves", st.Moves))
	switch {
	case st.Lossy():
		log.Warn("flow map and overflow map full: some packets were not counted at all; raise --max-overflow or --max-flows, or lower --move-interval",
			append(fields, zap.Uint64("packets_lost", st.OverflowInsertFailed), zap.Uint64("packets_without_peer", st.FlowInsertFailed),
				zap.Uint64("evicted", st.FlowEvictions))...)
	case st.FlowInsertFailed > 0:
		log.Warn("flow map full at times: some packets were counted per service without their peer; raise --max-flows or lower --move-interval",
			append(fields, zap.Uint64("packets_without_peer", st.FlowInsertFailed), zap.Int("services", len(s.Overflow)))...)
	default:
		log.Info("recorded", fields...)
	}
	if st.FoldedFlows > 0 {
		log.Warn("memory budget reached: the peers of some services were folded into prefixes (see --flow-budget)",
			zap.Uint64("entries_folded", st.FoldedFlows), zap.Uint64("budget_entries", st.FlowBudget))
	}
}

// progress draws a one-line status on a terminal: elapsed / remaining,
// packets, flows, moves and loss. It reads only counters (bpf.Counters),
// never the flow maps, so it never freezes.
type progress struct {
	w        io.Writer
	total    time.Duration
	lastLen  int
	anything bool
}

func newProgress(w io.Writer, total time.Duration) *progress {
	return &progress{w: w, total: total}
}

func (p *progress) update(elapsed time.Duration, n bpf.Counters) {
	if p.w == nil {
		return
	}
	remaining := max(p.total-elapsed, 0)
	line := fmt.Sprintf("%s elapsed, %s left | %d pkts in, %d out | %d flows + %d in kernel (%d moves)",
		elapsed.Round(time.Second), remaining.Round(time.Second), n.PacketsIngress, n.PacketsEgress,
		n.Accumulated, n.ActiveEntries, n.Moves)
	if n.FlowInsertFailed > 0 {
		line += fmt.Sprintf(" | MAP FULL: %d pkts without peer", n.FlowInsertFailed)
	}
	if n.OverflowInsertFailed > 0 {
		line += fmt.Sprintf(" | LOST: %d pkts", n.OverflowInsertFailed)
	}
	pad := ""
	if k := p.lastLen - len(line); k > 0 {
		pad = strings.Repeat(" ", k)
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

// inputFlags are the "--snapshot FILE | --iface … --duration D" input of
// audit and rules: read a snapshot, or record one live.
type inputFlags struct {
	liveFlags
	snapPath   string
	saveSnap   string
	checkpoint time.Duration
}

func (in *inputFlags) register(fs *pflag.FlagSet, what string) {
	in.liveFlags.register(fs, 10*time.Minute)
	fs.StringVarP(&in.snapPath, "snapshot", "s", "", what+" this snapshot file instead of recording")
	fs.StringVar(&in.saveSnap, "save-snapshot", "", "when recording live, also write the snapshot here (checked before recording starts; NAME.json is JSON, any other name compact)")
	fs.DurationVar(&in.checkpoint, "checkpoint", defaultCheckpoint, "with --save-snapshot, write the snapshot so far there at this interval (0: never)")
}

// defaultCheckpoint: a recording longer than this is checkpointed.
const defaultCheckpoint = 5 * time.Minute

// recordOptions: progress on a terminal, else in the log every minute;
// --save-snapshot also takes the checkpoints.
func (in *inputFlags) recordOptions(e *env) recordOptions {
	ro := recordOptions{logEvery: in.logProgress, checkpoint: in.checkpoint, checkpointPath: in.saveSnap}
	if isTerminal(e.stderr) {
		ro.progress = e.stderr
	}
	return ro
}

// live reports whether the input is a live recording (--iface given).
func (in *inputFlags) live() bool { return len(in.ifaces) > 0 }

// check validates the combination; needed says whether some input is
// required at all.
func (in *inputFlags) check(needed bool, missing string) error {
	switch {
	case in.snapPath != "" && in.live():
		return usageErrorf("--snapshot and --iface exclude each other")
	case in.saveSnap != "" && !in.live():
		return usageErrorf("--save-snapshot only applies when recording live (--iface)")
	case needed && in.snapPath == "" && !in.live():
		return usageError{errors.New(missing)}
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
		if err := checkWritableFile("--save-snapshot", in.saveSnap); err != nil {
			return nil, err
		}
		ctx, stop := signalContext()
		defer stop()
		snap, err := recordLive(ctx, e, &in.liveFlags, in.recordOptions(e))
		if snap != nil && in.saveSnap != "" {
			if werr := snapshot.WriteFile(in.saveSnap, snap); werr != nil {
				return nil, errors.Join(err, werr)
			}
		}
		if err != nil {
			return nil, err
		}
		return snap, nil
	case in.snapPath != "":
		snap, err := snapshot.ReadFile(in.snapPath)
		if err != nil {
			return nil, err
		}
		if len(snap.Unknown) > 0 {
			// A newer recorder's additions: they change nothing this build
			// reads (docs/SNAPSHOT.md, Compatibility).
			e.log.Debug("snapshot fields this build does not know, ignored", zap.String("file", in.snapPath),
				zap.Int("version", snap.Version), zap.String("written by", strings.TrimSpace(snap.Tool.Name+" "+snap.Tool.Version)),
				zap.Strings("fields", snap.Unknown))
		}
		return snap, nil
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
