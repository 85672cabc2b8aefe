package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestE2EMissingIfaceListsNetns: in a network namespace, recording on an
// interface that does not exist fails (exit 1) with the interfaces of that
// namespace listed, and none of the test's own namespace.
func TestE2EMissingIfaceListsNetns(t *testing.T) {
	a, _ := testenv.NewPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, lines := startInNS(t, ctx, a, nil, "record", "--iface", "nosuch0", "--duration", "10s",
		"--out", filepath.Join(t.TempDir(), "snap.json"))
	var logged []string
	for l := range lines {
		logged = append(logged, l)
	}
	all := strings.Join(logged, "\n")
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitError {
		t.Fatalf("exit: %v, want %d\n%s", err, exitError, all)
	}
	// Exactly the namespace's: lo and the veth end, none of the test's own
	// namespace.
	m := regexp.MustCompile(`interfaces in this network namespace: ([^)"]*)\)`).FindStringSubmatch(all)
	if m == nil || !strings.Contains(all, "nosuch0") {
		t.Fatalf("the error does not name nosuch0 and list the interfaces:\n%s", all)
	}
	if want := "lo, " + a.Iface; m[1] != want {
		t.Errorf("listed %q, want %q (the namespace's own)", m[1], want)
	}
}
