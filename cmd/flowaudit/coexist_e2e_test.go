package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// otherToolXDP attaches another tool's pass-everything XDP program to h's
// veth the netlink way, in mode (XDP_FLAGS_*), and keeps no fd to it: the
// attachment is its only reference, as for a tool that attached and exited.
func otherToolXDP(t *testing.T, h *testenv.Host, flags int) ebpf.ProgramID {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "other_tool", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(h.Iface)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, p.FD(), flags)
	}); err != nil {
		t.Fatal(err)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// xdpProgOn returns the XDP program id and IFLA_XDP_ATTACHED mode
// (1 native, 2 generic) of h's veth.
func xdpProgOn(t *testing.T, h *testenv.Host) (ebpf.ProgramID, uint32) {
	t.Helper()
	var x *netlink.LinkXdp
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(h.Iface)
		if err == nil {
			x = l.Attrs().Xdp
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if x == nil || !x.Attached {
		return 0, 0
	}
	return ebpf.ProgramID(x.ProgId), x.AttachMode
}

// TestE2EReplaceXDPRestoredOnSIGTERM: `flowaudit record --replace-xdp`
// takes the interface's XDP hook from another program and gives it back,
// same program and mode, when stopped by SIGTERM.
func TestE2EReplaceXDPRestoredOnSIGTERM(t *testing.T) {
	for _, tc := range []struct {
		ingress string
		flags   int
		mode    uint32
	}{
		{"xdp-native", unix.XDP_FLAGS_DRV_MODE, 1},
		{"xdp-generic", unix.XDP_FLAGS_SKB_MODE, 2},
	} {
		t.Run(tc.ingress, func(t *testing.T) {
			a, _ := testenv.NewPair(t)
			other := otherToolXDP(t, a, tc.flags)
			snapPath := filepath.Join(t.TempDir(), "snap.json")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface, "--duration", "10m",
				"--ingress", tc.ingress, "--replace-xdp", "--out", snapPath)
			logged := waitLog(t, lines, `"msg":"recording"`)
			if id, _ := xdpProgOn(t, a); id == other || id == 0 {
				t.Fatalf("while recording: XDP program %d, want flowaudit's instead of %d\n%s", id, other, strings.Join(logged, "\n"))
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			for l := range lines {
				logged = append(logged, l)
			}
			all := strings.Join(logged, "\n")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("record after SIGTERM: %v\n%s", err, all)
			}
			if id, mode := xdpProgOn(t, a); id != other || mode != tc.mode {
				t.Errorf("after SIGTERM: XDP program %d mode %d, want the other program %d back in mode %d\n%s", id, mode, other, tc.mode, all)
			}
			for _, want := range []string{`"msg":"put back the replaced XDP program"`, `"msg":"snapshot written"`} {
				if !strings.Contains(all, want) {
					t.Errorf("no %s in the log:\n%s", want, all)
				}
			}
		})
	}
}

// TestE2EReplaceXDPRestoredOnError: attaching to a second, missing
// interface fails after the first one's XDP program was replaced; the
// error exit puts it back.
func TestE2EReplaceXDPRestoredOnError(t *testing.T) {
	a, _ := testenv.NewPair(t)
	other := otherToolXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", a.Iface+",nosuch0", "--duration", "10m",
		"--ingress", "xdp-native", "--replace-xdp", "--out", filepath.Join(t.TempDir(), "snap.json"))
	var logged []string
	for l := range lines {
		logged = append(logged, l)
	}
	all := strings.Join(logged, "\n")
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError || !strings.Contains(all, "nosuch0") {
		t.Fatalf("record with a missing interface: %v, want exit %d naming nosuch0\n%s", err, exitError, all)
	}
	if !strings.Contains(all, "detached the existing XDP program") {
		t.Fatalf("the first interface was not replaced before the error; the test proves nothing:\n%s", all)
	}
	if id, mode := xdpProgOn(t, a); id != other || mode != 1 {
		t.Errorf("after the error: XDP program %d mode %d, want %d native\n%s", id, mode, other, all)
	}
}
