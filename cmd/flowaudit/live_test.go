package main

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf"
)

func TestProgressLine(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, time.Minute)
	n := bpf.Counters{PacketsIngress: 10, PacketsEgress: 7, Accumulated: 40, ActiveEntries: 3, Moves: 2, FlowCapacity: 64}
	p.update(5*time.Second, n)
	line := buf.String()
	for _, want := range []string{"\r5s elapsed, 55s left", "10 pkts in, 7 out", "40 flows + 3 in kernel (2 moves)"} {
		if !strings.Contains(line, want) {
			t.Errorf("progress %q lacks %q", line, want)
		}
	}
	if strings.Contains(line, "MAP FULL") || strings.Contains(line, "LOST") {
		t.Errorf("loss reported without loss: %q", line)
	}
	// Loss shows at once, and a shorter line blanks the rest of the old one.
	n.FlowInsertFailed, n.OverflowInsertFailed = 4, 1
	buf.Reset()
	p.update(6*time.Second, n)
	if l := buf.String(); !strings.Contains(l, "MAP FULL: 4 pkts without peer") || !strings.Contains(l, "LOST: 1 pkts") {
		t.Errorf("second progress line %q", l)
	}
	long := p.lastLen
	buf.Reset()
	p.update(7*time.Second, bpf.Counters{})
	if l := buf.String(); len(l)-1 != long { // "\r" + line + padding
		t.Errorf("line of %d characters after one of %d: the old one is not blanked", len(l)-1, long)
	}
	buf.Reset()
	p.done()
	if buf.String() != "\n" {
		t.Errorf("done wrote %q", buf.String())
	}
	// No terminal: nothing at all.
	q := newProgress(nil, time.Minute)
	q.update(time.Second, n)
	q.done()
}

// TestSignalContextNamesTheSignal: the interruption recorded in a snapshot
// names the signal that stopped the recording.
func TestSignalContextNamesTheSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		ctx, stop := signalContext()
		if err := syscall.Kill(syscall.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v did not cancel the context", sig)
		}
		at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
		in := interruption(ctx, at, at.Add(time.Hour))
		want := map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]
		if in.Signal != want || !in.At.Equal(at) || !in.PlannedEnd.Equal(at.Add(time.Hour)) {
			t.Errorf("%v: interruption %+v", sig, in)
		}
		stop()
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(context.DeadlineExceeded)
	if in := interruption(ctx, time.Now(), time.Now()); in.Signal != "error" || !strings.Contains(in.Reason, "deadline") {
		t.Errorf("error interruption %+v", in)
	}
}

// TestSignalContextHUP: with a SIGHUP handler (watch --events FILE),
// SIGHUP calls it, as often as it comes, and does not stop anything;
// SIGTERM still does. Without one, SIGHUP stops like SIGTERM.
func TestSignalContextHUP(t *testing.T) {
	hups := make(chan struct{}, 4)
	ctx, stop := signalContextHUP(func() { hups <- struct{}{} })
	for i := 0; i < 2; i++ {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case <-hups:
		case <-time.After(5 * time.Second):
			t.Fatalf("SIGHUP %d did not call the handler", i+1)
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("SIGHUP stopped the context: %v", context.Cause(ctx))
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not cancel the context")
	}
	if in := interruption(ctx, time.Now(), time.Now()); in.Signal != "SIGTERM" {
		t.Errorf("interruption %+v", in)
	}
	stop()

	ctx, stop = signalContext()
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGHUP without a handler did not cancel the context")
	}
	if in := interruption(ctx, time.Now(), time.Now()); in.Signal != "SIGHUP" {
		t.Errorf("interruption %+v", in)
	}
}
