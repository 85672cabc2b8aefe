package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"net/netip"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestE2ERecordUnwritableOut: an --out that cannot be written fails at
// once, before anything is attached, instead of after the whole duration.
func TestE2ERecordUnwritableOut(t *testing.T) {
	a, _ := testenv.NewPair(t)
	for _, c := range []struct{ out, want string }{
		{"/proc/flowaudit-snap.json", "--out /proc/flowaudit-snap.json: cannot be written"},
		{t.TempDir(), "exists and is not a regular file"},
		{filepath.Join(t.TempDir(), "missing", "snap.json"), "no such file or directory"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "1h", "--out", c.out)
		var logged []string
		for l := range lines {
			logged = append(logged, l)
		}
		err := cmd.Wait()
		cancel()
		all := strings.Join(logged, "\n")
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError {
			t.Fatalf("%s: exit %v, want %d\n%s", c.out, err, exitError, all)
		}
		if !strings.Contains(all, c.want) {
			t.Errorf("%s: error lacks %q:\n%s", c.out, c.want, all)
		}
		if strings.Contains(all, `"msg":"attached"`) || strings.Contains(all, `"msg":"recording"`) {
			t.Errorf("%s: attached before checking --out:\n%s", c.out, all)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %s to fail", c.out, d)
		}
	}
	if l := a.Exec("ip", "link", "show", a.Iface); strings.Contains(l, "xdp") {
		t.Errorf("XDP attached:\n%s", l)
	}
}

// TestE2ERecordSignalsAndCheckpoints: checkpoints appear at their interval
// and survive a SIGKILL; SIGINT, SIGTERM and SIGHUP give a snapshot that
// says it was interrupted, by which signal and when; without a terminal, progress
// goes to the log.
func TestE2ERecordSignalsAndCheckpoints(t *testing.T) {
	a, b := testenv.NewPair(t)
	svc := netip.AddrPortFrom(a.IPv4, 8443)
	listenIn(t, a, svc)

	t.Run("checkpoints survive SIGKILL", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "snap.json")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "1h", "--out", out,
			"--checkpoint", "1s", "--log-progress", "1s")
		waitLog(t, lines, `"msg":"recording"`)
		dialN(t, b, svc, 2)
		waitLog(t, lines, `"msg":"recording progress"`)
		// A checkpoint written after the connections holds them.
		deadline := time.Now().Add(20 * time.Second)
		var snap *snapshot.Snapshot
		for time.Now().Before(deadline) {
			waitLog(t, lines, `"msg":"checkpoint written"`)
			s, err := snapshot.ReadFile(out)
			if err != nil {
				t.Fatalf("checkpoint unreadable: %v", err)
			}
			if countSYN(s, 8443) == 2 {
				snap = s
				break
			}
		}
		if snap == nil {
			t.Fatal("no checkpoint with the two connections in 20 s")
		}
		if !snap.Checkpoint || snap.Interrupted != nil {
			t.Errorf("checkpoint %v, interrupted %+v", snap.Checkpoint, snap.Interrupted)
		}
		// A crash keeps the last checkpoint, still marked as such.
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait() //nolint:errcheck // killed
		s, err := snapshot.ReadFile(out)
		if err != nil || !s.Checkpoint || countSYN(s, 8443) != 2 {
			t.Errorf("after SIGKILL: %v, checkpoint %v", err, s != nil && s.Checkpoint)
		}
		abs := func(p string) string { s, _ := filepath.Abs(p); return s }
		_, report, _ := runCLI(t, "audit", "--catalog", abs("testdata/lab-catalog.yaml"), "--matrix", "labapp",
			"--role", "server", "--site", abs("testdata/lab-site.yaml"), "--snapshot", out, "--format", "json")
		if !strings.Contains(report, `"id": "audit-incomplete/checkpoint"`) {
			t.Errorf("the audit of the last checkpoint does not say the recorder did not finish:\n%s", report)
		}
		if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
			t.Errorf("%d files beside the snapshot: temporary files left", len(ents))
		}
	})

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		name := map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP"}[sig]
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "snap.json")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "10m", "--out", out)
			waitLog(t, lines, `"msg":"recording"`)
			dialN(t, b, svc, 3)
			before := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			logged := waitLog(t, lines, `"msg":"snapshot written"`)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("record after %s: %v\n%s", name, err, strings.Join(logged, "\n"))
			}
			s, err := snapshot.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			in := s.Interrupted
			if in == nil || in.Signal != name || in.At.Before(before.Add(-time.Second)) || in.At.After(time.Now()) ||
				in.PlannedEnd.Sub(s.Start) != 10*time.Minute || s.Checkpoint {
				t.Errorf("interruption %+v (start %s), checkpoint %v", in, s.Start, s.Checkpoint)
			}
			if countSYN(s, 8443) != 3 {
				t.Errorf("the 3 connections are not in the snapshot")
			}
			// The audit says so.
			abs := func(p string) string { s, _ := filepath.Abs(p); return s }
			_, report, _ := runCLI(t, "audit", "--catalog", abs("testdata/lab-catalog.yaml"), "--matrix", "labapp",
				"--role", "server", "--site", abs("testdata/lab-site.yaml"), "--snapshot", out, "--format", "json")
			if !strings.Contains(report, `"id": "audit-incomplete/interrupted"`) || !strings.Contains(report, name) {
				t.Errorf("the audit does not report the interruption by %s:\n%s", name, report)
			}
		})
	}
}

// countSYN sums the SYNs received on an inbound TCP port.
func countSYN(s *snapshot.Snapshot, port uint16) uint64 {
	var n uint64
	for _, f := range s.Flows {
		if f.Direction == snapshot.Inbound && f.Proto == snapshot.TCP && f.Port == port {
			n += f.Evidence.SynIn
		}
	}
	return n
}
