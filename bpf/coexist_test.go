package bpf

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// Coexistence: a program replaced by ReplaceXDP goes back on detach, even
// after a failed Attach or a SIGKILL (through its pin), and clsact filters
// of killed runs are removed while live ones and other tools' stay.

// helperOptsEnv passes AttachOptions to the recorder helper (TestMain):
// comma-separated "ingress=MODE", "tc=MODE", "replace-xdp", "pin-dir=DIR".
const helperOptsEnv = "FLOWAUDIT_TEST_ATTACH_OPTS"

func helperAttachOptions() AttachOptions {
	var o AttachOptions
	for _, kv := range strings.Split(getenv(helperOptsEnv), ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "ingress":
			o.Ingress = v
		case "tc":
			o.TC = v
		case "replace-xdp":
			o.ReplaceXDP = true
		case "pin-dir":
			o.PinDir = v
		}
	}
	return o
}

// startRecorder runs the test binary as a recorder attached to h's veth
// with opts (helperOptsEnv syntax) and returns once it has attached. The
// recorder's pid is the command's: `ip netns exec` execs it.
func startRecorder(t *testing.T, h *testenv.Host, opts string) *exec.Cmd {
	t.Helper()
	return startRecorderOn(t, h, h.Iface, opts)
}

func startRecorderOn(t *testing.T, h *testenv.Host, iface, opts string) *exec.Cmd {
	t.Helper()
	self, err := executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(self, "-test.run=^$")
	cmd.Env = append(environ(), helperEnv+"="+iface, helperOptsEnv+"="+opts)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	line := make([]byte, 256)
	n, _ := io.ReadAtLeast(stdout, line, 5)
	if !strings.HasPrefix(string(line[:n]), "ready") {
		t.Fatalf("recorder (%s): %q", opts, line[:n])
	}
	return cmd
}

// killRecorder SIGKILLs a recorder and waits until it is gone.
func killRecorder(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() //nolint:errcheck // killed
}

// bpffsDir mounts a private bpffs for the test's pins: the host's
// /sys/fs/bpf is neither needed nor touched.
func bpffsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) //nolint:errcheck
	return filepath.Join(dir, "flowaudit")
}

func pins(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// setXDPMode attaches fd the pre-bpf_link way with mode flags (call inside
// the netns).
func setXDPMode(iface string, fd, flags int) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	return netlink.LinkSetXdpFdWithFlags(l, fd, flags)
}

// xdpOn returns the XDP program id and IFLA_XDP_ATTACHED mode of h's veth.
func xdpOn(t *testing.T, h *testenv.Host) (ebpf.ProgramID, uint32) {
	t.Helper()
	return xdpOnIface(t, h, h.Iface)
}

func xdpOnIface(t *testing.T, h *testenv.Host, iface string) (ebpf.ProgramID, uint32) {
	t.Helper()
	var x *netlink.LinkXdp
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(iface)
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

// otherXDP attaches another tool's XDP program in mode (XDP_FLAGS_*) and
// drops our fd to it, as that tool would after attaching: from then on the
// attachment is its only reference.
func otherXDP(t *testing.T, h *testenv.Host, flags int) ebpf.ProgramID {
	t.Helper()
	return toolXDP(t, h, h.Iface, "other_tool", flags)
}

func toolXDP(t *testing.T, h *testenv.Host, iface, name string, flags int) ebpf.ProgramID {
	t.Helper()
	p, err := newPassProgram(name)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := h.Do(func() error { return setXDPMode(iface, p.FD(), flags) }); err != nil {
		t.Fatal(err)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func openIn(t *testing.T, h *testenv.Host, log *zap.Logger) *Collector {
	t.Helper()
	var c *Collector
	if err := h.Do(func() (err error) { c, err = Open(Options{Logger: log}); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	return zap.New(core), logs
}

// warned returns the warnings whose message contains msg.
func warned(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range logs.FilterLevelExact(zap.WarnLevel).All() {
		if strings.Contains(e.Message, msg) {
			out = append(out, e)
		}
	}
	return out
}

func TestCoexistReplaceRestores(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   int    // the other program's mode
		mode    uint32 // as the kernel reports it
		ingress string // ours
	}{
		{"native-over-native", unix.XDP_FLAGS_DRV_MODE, xdpAttachedDrv, IngressXDPNative},
		{"generic-over-generic", unix.XDP_FLAGS_SKB_MODE, xdpAttachedSkb, IngressXDPGeneric},
		{"auto-over-generic", unix.XDP_FLAGS_SKB_MODE, xdpAttachedSkb, IngressAuto},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := testenv.NewPair(t)
			dir := bpffsDir(t)
			other := otherXDP(t, a, tc.flags)
			log, logs := observed()
			c := openIn(t, a, log)
			att, err := c.Attach(a.Iface, AttachOptions{Ingress: tc.ingress, ReplaceXDP: true, PinDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if id, _ := xdpOn(t, a); id == other || id == 0 || !strings.HasPrefix(att.Ingress, "xdp-") {
				t.Fatalf("while attached: XDP program %d (other %d), ingress %s", id, other, att.Ingress)
			}
			if w := warned(logs, "detached the existing XDP program"); len(w) != 1 || !strings.Contains(w[0].ContextMap()["xdp"].(string), "other_tool") {
				t.Errorf("replace warning: %+v", w)
			}
			// Pinned under our pid while replaced: the only reference
			// besides our fd.
			p := pins(t, dir)
			if len(p) != 1 || !strings.Contains(p[0], "-"+strconv.Itoa(os.Getpid())+"-") || !strings.HasSuffix(p[0], "-"+a.Iface) {
				t.Fatalf("pins while replaced: %v", p)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if id, mode := xdpOn(t, a); id != other || mode != tc.mode {
				t.Errorf("after Close: XDP program %d mode %d, want the other program %d back in mode %d", id, mode, other, tc.mode)
			}
			if p := pins(t, dir); len(p) != 0 {
				t.Errorf("pins left after restore: %v", p)
			}
		})
	}
}

// TestCoexistRestoreAfterFailedAttach: ingress replaced the other program,
// then egress failed; the failed Attach puts it back.
func TestCoexistRestoreAfterFailedAttach(t *testing.T) {
	a, _ := testenv.NewPair(t)
	dir := bpffsDir(t)
	other := otherXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
	c := openIn(t, a, nil)
	// An unknown TC mode is only looked at by the egress attach, after
	// the ingress XDP program replaced the other one.
	_, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative, TC: "bogus", ReplaceXDP: true, PinDir: dir})
	if err == nil || !strings.Contains(err.Error(), "unknown TC mode") {
		t.Fatalf("attach: %v, want the egress error", err)
	}
	if id, mode := xdpOn(t, a); id != other || mode != xdpAttachedDrv {
		t.Errorf("after the failed attach: XDP program %d mode %d, want %d native", id, mode, other)
	}
	if p := pins(t, dir); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
	if n := len(c.Attachments()); n != 0 {
		t.Errorf("%d attachments after a failed attach", n)
	}
}

// TestCoexistRestoreInterfaceGone: the interface vanished while replaced;
// Close says so, naming the program and the interface, and drops the pin.
func TestCoexistRestoreInterfaceGone(t *testing.T) {
	a, _ := testenv.NewPair(t)
	dir := bpffsDir(t)
	other := otherXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
	c := openIn(t, a, nil)
	if _, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative, ReplaceXDP: true, PinDir: dir}); err != nil {
		t.Fatal(err)
	}
	a.Exec("ip", "link", "del", a.Iface)
	err := c.Close()
	if !errors.Is(err, ErrInterfaceNotFound) || !strings.Contains(err.Error(), "other_tool") ||
		!strings.Contains(err.Error(), strconv.Itoa(int(other))) || !strings.Contains(err.Error(), a.Iface) {
		t.Errorf("Close: %v, want ErrInterfaceNotFound naming other_tool, id %d and %s", err, other, a.Iface)
	}
	if p := pins(t, dir); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
}

// TestCoexistReplaceWithoutBPFFS: without a bpffs the program is replaced
// with a warning (SIGKILL would lose it) and still put back on Close.
func TestCoexistReplaceWithoutBPFFS(t *testing.T) {
	a, _ := testenv.NewPair(t)
	other := otherXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
	log, logs := observed()
	c := openIn(t, a, log)
	notBPFFS := filepath.Join(t.TempDir(), "flowaudit")
	if _, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative, ReplaceXDP: true, PinDir: notBPFFS}); err != nil {
		t.Fatal(err)
	}
	if w := warned(logs, "not pinned"); len(w) != 1 || !strings.Contains(w[0].ContextMap()["error"].(string), "no bpffs") {
		t.Errorf("want one 'not pinned' warning saying no bpffs, got %+v", w)
	}
	if _, err := os.Stat(notBPFFS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created %s on a non-bpffs: %v", notBPFFS, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if id, mode := xdpOn(t, a); id != other || mode != xdpAttachedDrv {
		t.Errorf("after Close: XDP program %d mode %d, want %d native", id, mode, other)
	}
}

// TestCoexistLinkOwnedXDP: a program attached through a bpf_link cannot be
// detached by anyone else; Attach says so and leaves nothing behind.
func TestCoexistLinkOwnedXDP(t *testing.T) {
	a, _ := testenv.NewPair(t)
	dir := bpffsDir(t)
	p, err := newPassProgram("linked_tool")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var lk link.Link
	if err := a.Do(func() error {
		l, err := netlink.LinkByName(a.Iface)
		if err != nil {
			return err
		}
		lk, err = link.AttachXDP(link.XDPOptions{Program: p, Interface: l.Attrs().Index, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	before, _ := xdpOn(t, a)
	c := openIn(t, a, nil)
	_, err = c.Attach(a.Iface, AttachOptions{Ingress: IngressXDPNative, ReplaceXDP: true, PinDir: dir})
	if !errors.Is(err, ErrXDPInUse) || !strings.Contains(err.Error(), "linked_tool") || !strings.Contains(err.Error(), "bpf_link") {
		t.Fatalf("attach over a bpf_link: %v, want ErrXDPInUse naming linked_tool and bpf_link", err)
	}
	if id, _ := xdpOn(t, a); id != before {
		t.Errorf("XDP program %d, want the linked one %d untouched", id, before)
	}
	if p := pins(t, dir); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
}

// TestCoexistSIGKILLRestoresPinned: a recorder that replaced another XDP
// program is SIGKILLed; the kernel drops its link, the pin keeps the other
// program alive, and the next Attach on the interface puts it back.
func TestCoexistSIGKILLRestoresPinned(t *testing.T) {
	for _, next := range []struct {
		name string
		opts AttachOptions
	}{
		{"next-run-auto", AttachOptions{}},
		// Asked to replace again: put back first, then replaced again and
		// owed back at Close.
		{"next-run-replaces-again", AttachOptions{Ingress: IngressXDPNative, ReplaceXDP: true}},
	} {
		t.Run(next.name, func(t *testing.T) {
			a, _ := testenv.NewPair(t)
			dir := bpffsDir(t)
			other := otherXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
			rec := startRecorder(t, a, "ingress=xdp-native,replace-xdp,pin-dir="+dir)
			if id, _ := xdpOn(t, a); id == other || id == 0 {
				t.Fatalf("recorder did not replace the other program: XDP %d", id)
			}
			p := pins(t, dir)
			if len(p) != 1 || !strings.Contains(p[0], "-native-"+strconv.Itoa(rec.Process.Pid)+"-") {
				t.Fatalf("pins of recorder %d: %v", rec.Process.Pid, p)
			}
			// While the recorder lives, another run leaves its pin alone.
			log, logs := observed()
			c := openIn(t, a, log)
			if _, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressTC, PinDir: dir}); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if q := pins(t, dir); len(q) != 1 || q[0] != p[0] || len(warned(logs, "")) != 0 {
				t.Fatalf("a live recorder's pin was touched or judged: pins %v, logs %v", q, logs.All())
			}

			killRecorder(t, rec)
			deadline := time.Now().Add(5 * time.Second)
			for id, _ := xdpOn(t, a); id != 0; id, _ = xdpOn(t, a) {
				if time.Now().After(deadline) {
					t.Fatalf("recorder's XDP link (program %d) still attached 5 s after SIGKILL", id)
				}
				time.Sleep(50 * time.Millisecond)
			}
			// The pin alone keeps the other program alive.
			if prog, err := ebpf.NewProgramFromID(other); err != nil {
				t.Fatalf("the replaced program %d is gone after SIGKILL: %v", other, err)
			} else {
				prog.Close()
			}

			log, logs = observed()
			c = openIn(t, a, log)
			opts := next.opts
			opts.PinDir = dir
			att, err := c.Attach(a.Iface, opts)
			if err != nil {
				t.Fatal(err)
			}
			w := warned(logs, "put back the XDP program that a killed flowaudit had replaced")
			if len(w) != 1 || w[0].ContextMap()["former_pid"] != int64(rec.Process.Pid) || !strings.Contains(w[0].ContextMap()["xdp"].(string), "other_tool") {
				t.Errorf("want one restore warning naming other_tool and pid %d, got %+v", rec.Process.Pid, w)
			}
			if next.opts.ReplaceXDP {
				if id, _ := xdpOn(t, a); id == other || att.Ingress != IngressXDPNative {
					t.Fatalf("not replaced again: XDP %d, ingress %s", id, att.Ingress)
				}
				if q := pins(t, dir); len(q) != 1 || !strings.Contains(q[0], "-"+strconv.Itoa(os.Getpid())+"-") {
					t.Fatalf("pins after replacing again: %v", q)
				}
			} else if id, mode := xdpOn(t, a); id != other || mode != xdpAttachedDrv || att.Ingress != TCX {
				t.Fatalf("after the next attach: XDP %d mode %d ingress %s, want %d native and ingress at TC", id, mode, att.Ingress, other)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if id, mode := xdpOn(t, a); id != other || mode != xdpAttachedDrv {
				t.Errorf("after Close: XDP %d mode %d, want %d native", id, mode, other)
			}
			if q := pins(t, dir); len(q) != 0 {
				t.Errorf("pins left: %v", q)
			}
		})
	}
}

// TestCoexistPinnedLeftovers: pins of killed recorders that cannot be put
// back. Interface gone: the pin is dropped. Interface renamed (the index
// may belong to another device now): left, with a warning. Interface
// running another XDP program now: that program stays, the pin is kept.
func TestCoexistPinnedLeftovers(t *testing.T) {
	a, _ := testenv.NewPair(t)
	dir := bpffsDir(t)
	for _, d := range []string{"fa-gone", "fa-renamed"} {
		a.Exec("ip", "link", "add", d, "type", "veth", "peer", "name", d+"-p")
		a.Exec("ip", "link", "set", d, "up")
		toolXDP(t, a, d, "other_tool", unix.XDP_FLAGS_SKB_MODE)
	}
	otherXDP(t, a, unix.XDP_FLAGS_DRV_MODE)
	var recs []*exec.Cmd
	for _, r := range []struct{ iface, opts string }{
		{"fa-gone", "ingress=xdp-generic,replace-xdp,pin-dir=" + dir},
		{"fa-renamed", "ingress=xdp-generic,replace-xdp,pin-dir=" + dir},
		{a.Iface, "ingress=xdp-native,replace-xdp,pin-dir=" + dir},
	} {
		recs = append(recs, startRecorderOn(t, a, r.iface, r.opts))
	}
	if p := pins(t, dir); len(p) != 3 {
		t.Fatalf("pins: %v, want 3", p)
	}
	for _, r := range recs {
		killRecorder(t, r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for id, _ := xdpOn(t, a); id != 0; id, _ = xdpOn(t, a) {
		if time.Now().After(deadline) {
			t.Fatalf("recorder's XDP link still attached 5 s after SIGKILL")
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.Exec("ip", "link", "del", "fa-gone")
	a.Exec("ip", "link", "set", "fa-renamed", "down")
	a.Exec("ip", "link", "set", "fa-renamed", "name", "fa-other")
	third := toolXDP(t, a, a.Iface, "third_tool", unix.XDP_FLAGS_DRV_MODE)

	log, logs := observed()
	c := openIn(t, a, log)
	if _, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressTC, PinDir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach("fa-other", AttachOptions{Ingress: IngressTC, PinDir: dir}); err != nil {
		t.Fatal(err)
	}
	if w := warned(logs, "its interface is gone"); len(w) != 1 || w[0].ContextMap()["former_pid"] != int64(recs[0].Process.Pid) {
		t.Errorf("want one 'interface gone' warning for pid %d: %+v", recs[0].Process.Pid, w)
	}
	if w := warned(logs, "names another interface"); len(w) != 1 || w[0].ContextMap()["iface"] != "fa-other" {
		t.Errorf("want one 'another interface' warning for fa-other: %+v", w)
	}
	if w := warned(logs, "the interface runs another one now"); len(w) != 1 || !strings.Contains(w[0].ContextMap()["now"].(string), "third_tool") {
		t.Errorf("want one 'runs another one' warning naming third_tool: %+v", w)
	}
	if id, _ := xdpOn(t, a); id != third {
		t.Errorf("XDP on %s: %d, want third_tool (%d) untouched", a.Iface, id, third)
	}
	if id, _ := xdpOnIface(t, a, "fa-other"); id != 0 {
		t.Errorf("XDP %d put back on the renamed interface", id)
	}
	kept := map[string]bool{}
	for _, p := range pins(t, dir) {
		for _, ifc := range []string{"fa-renamed", a.Iface} {
			if strings.HasSuffix(p, "-"+ifc) {
				kept[ifc] = true
			}
		}
	}
	if n := len(pins(t, dir)); n != 2 || !kept["fa-renamed"] || !kept[a.Iface] {
		t.Errorf("%d pins, kept %v: want exactly fa-renamed's and %s's", n, kept, a.Iface)
	}
}

type filterInfo struct {
	dir    string
	name   string
	handle uint32
}

// clsactFilters lists the cls_bpf filters on h's clsact qdisc.
func clsactFilters(t *testing.T, h *testenv.Host) []filterInfo {
	t.Helper()
	var out []filterInfo
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(h.Iface)
		if err != nil {
			return err
		}
		for _, p := range clsactParents {
			fs, err := netlink.FilterList(l, p.parent)
			if err != nil {
				return err
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name != "" {
					out = append(out, filterInfo{p.dir, bf.Name, bf.Handle})
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func hasFilter(fs []filterInfo, dir, name string) bool {
	for _, f := range fs {
		if f.dir == dir && f.name == name {
			return true
		}
	}
	return false
}

// TestCoexistStaleClsact: filters of a SIGKILLed recorder and of an older
// version stay after it died; the next Attach removes them with a warning,
// and leaves a live recorder's filter, another tool's filter and the qdisc.
func TestCoexistStaleClsact(t *testing.T) {
	a, _ := testenv.NewPair(t)
	testenv.RequireTool(t, "tc")
	a.Exec("tc", "qdisc", "add", "dev", a.Iface, "clsact")
	tool, err := newTCPassProgram("other_tool")
	if err != nil {
		t.Fatal(err)
	}
	defer tool.Close()
	if err := a.Do(func() error { return addBPFFilter(a.Iface, tool.FD(), "other_tool") }); err != nil {
		t.Fatal(err)
	}

	const clsact = "ingress=tc,tc=clsact"
	dead := startRecorder(t, a, clsact)
	live := startRecorder(t, a, clsact)
	deadName, liveName := filterName(dead.Process.Pid), filterName(live.Process.Pid)
	fs := clsactFilters(t, a)
	for _, d := range []string{"ingress", "egress"} {
		if !hasFilter(fs, d, deadName) || !hasFilter(fs, d, liveName) {
			t.Fatalf("recorders' %s filters missing: %+v", d, fs)
		}
	}
	killRecorder(t, dead)
	if fs := clsactFilters(t, a); !hasFilter(fs, "ingress", deadName) || !hasFilter(fs, "egress", deadName) {
		t.Fatalf("the killed recorder's filters vanished by themselves: %+v", fs)
	}
	// An older flowaudit's filter (named "flowaudit"), killed long ago (added now: a recorder's Attach would have removed it): its
	// program is held by the filter only.
	old, err := newTCPassProgram("old_flowaudit")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Do(func() error {
		l, err := netlink.LinkByName(a.Iface)
		if err != nil {
			return err
		}
		return netlink.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
				Handle: 0x10, Protocol: unix.ETH_P_ALL, Priority: legacyPrio},
			Fd: old.FD(), Name: "flowaudit", DirectAction: true,
		})
	}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	toolBefore := a.Exec("tc", "filter", "show", "dev", a.Iface, "egress", "pref", "1")

	log, logs := observed()
	c := openIn(t, a, log)
	if _, err := c.Attach(a.Iface, AttachOptions{Ingress: IngressTC, TC: TCClsact}); err != nil {
		t.Fatal(err)
	}
	fs = clsactFilters(t, a)
	me := filterName(os.Getpid())
	for _, d := range []string{"ingress", "egress"} {
		if hasFilter(fs, d, deadName) {
			t.Errorf("the killed recorder's %s filter is still there: %+v", d, fs)
		}
		if !hasFilter(fs, d, liveName) || !hasFilter(fs, d, me) {
			t.Errorf("%s: want the live recorder's and our filter: %+v", d, fs)
		}
	}
	if hasFilter(fs, "ingress", "flowaudit") {
		t.Errorf("the older version's stale filter is still there: %+v", fs)
	}
	removed := warned(logs, "removed a clsact filter left by a flowaudit that was killed")
	got := map[string]bool{}
	for _, w := range removed {
		m := w.ContextMap()
		got[m["direction"].(string)+" "+m["filter"].(string)+" "+m["handle"].(string)+" "+toString(m["former_pid"])] = true
	}
	pid := strconv.Itoa(dead.Process.Pid)
	for _, want := range []string{"ingress " + deadName + " 0xfa " + pid, "egress " + deadName + " 0xfa " + pid,
		"ingress flowaudit 0x10 unknown (older flowaudit)"} {
		if !got[want] {
			t.Errorf("no removal warning %q in %v", want, got)
		}
	}
	if len(removed) != 3 {
		t.Errorf("%d removal warnings, want 3", len(removed))
	}
	if w := warned(logs, "another flowaudit is counting"); len(w) != 2 || w[0].ContextMap()["pid"] != int64(live.Process.Pid) {
		t.Errorf("want two warnings about the live recorder %d, got %+v", live.Process.Pid, w)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if after := a.Exec("tc", "filter", "show", "dev", a.Iface, "egress", "pref", "1"); after != toolBefore {
		t.Errorf("the other tool's filter changed:\nbefore:\n%s\nafter:\n%s", toolBefore, after)
	}
	if fs := clsactFilters(t, a); !hasFilter(fs, "egress", liveName) || hasFilter(fs, "egress", me) {
		t.Errorf("after Close: %+v, want the live recorder's filter and not ours", fs)
	}
	if q := a.Exec("tc", "qdisc", "show", "dev", a.Iface); !strings.Contains(q, "clsact") {
		t.Errorf("clsact qdisc removed:\n%s", q)
	}
}

func toString(v any) string {
	if i, ok := v.(int64); ok {
		return strconv.FormatInt(i, 10)
	}
	s, _ := v.(string)
	return s
}
