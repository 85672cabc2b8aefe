package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestGeneratedUpToDate compiles flowaudit.c again with the pinned
// toolchain, exactly as `go generate` does (the command is read from
// gen.go), and requires the committed *_bpfel.go and *_bpfel.o to be
// byte-for-byte identical. It fails in CI if clang-14 is missing.
func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the BPF program")
	}
	testenv.RequireTool(t, "clang-14")
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args = splitQuoted(t, rest)
		}
	}
	if args == nil {
		t.Fatal("no go:generate bpf2go line in gen.go")
	}
	out := t.TempDir()
	cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpf", "GOFILE=gen.go")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	for _, name := range []string{"flowaudit_bpfel.go", "flowaudit_bpfel.o"} {
		want, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale or not reproducible: run `make generate` and commit the result", name)
		}
	}
}

// splitQuoted splits a go:generate argument string, honouring "…".
func splitQuoted(t *testing.T, s string) []string {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQ, have = !inQ, true
		case r == ' ' && !inQ:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if inQ {
		t.Fatalf("unbalanced quotes in %q", s)
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
