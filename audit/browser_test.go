package audit

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// The HTML report as a browser shows it: headless Chromium renders the
// fixture report from a file:// URL, once to a screenshot and once to its
// DOM. Skipped without chromium, except in CI (CI=true), where it fails.
// (Only the test imports bpf/testenv, for that gate; the audit package
// itself stays free of bpf.)

const browserTimeout = 60 * time.Second

// chromium runs headless Chromium with args after the common flags and
// returns its standard output. The process group is killed if it outlives
// the timeout.
func chromium(t *testing.T, bin, profile string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	all := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile,
	}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.Env = append(os.Environ(), "HOME="+profile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("chromium %s: timed out after %s\n%s", strings.Join(args, " "), browserTimeout, stderr.Bytes())
	}
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes()
}

func TestBrowserHTMLReport(t *testing.T) {
	testenv.RequireTool(t, "chromium")
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal(err)
	}
	r := fixtureReport(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	if err := os.WriteFile(page, render(t, r, "html"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := "file://" + page

	t.Run("screenshot", func(t *testing.T) {
		shot := filepath.Join(dir, "shot.png")
		chromium(t, bin, filepath.Join(dir, "profile-shot"), "--screenshot="+shot, "--window-size=1280,2000", url)
		f, err := os.Open(shot)
		if err != nil {
			t.Fatalf("no screenshot: %v", err)
		}
		defer f.Close()
		img, err := png.Decode(f)
		if err != nil {
			t.Fatalf("screenshot is not a PNG: %v", err)
		}
		if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 1000 {
			t.Errorf("screenshot is %dx%d", b.Dx(), b.Dy())
		}
		colors := distinctColors(img)
		if colors < 64 {
			t.Errorf("screenshot has %d distinct colours: the page did not render", colors)
		}
		// The page's own styles applied: the high-severity badge (#b00020),
		// the busiest documented heat-map cell (level 9, hsl(215,80%,27%))
		// and the outbound HTTPS row (undocumented, level 6,
		// hsl(14,85%,52%)) are on screen.
		for name, c := range map[string][3]uint8{
			"high badge":                {0xb0, 0x00, 0x20},
			"documented heat level 9":   {14, 60, 124},
			"undocumented heat level 6": {237, 77, 29},
		} {
			if !hasColor(img, c, 6) {
				t.Errorf("no %s colour %v in the screenshot", name, c)
			}
		}
		if t.Failed() {
			keep := filepath.Join(os.TempDir(), "flowaudit-report-shot.png")
			if data, err := os.ReadFile(shot); err == nil && os.WriteFile(keep, data, 0o644) == nil {
				t.Logf("screenshot kept at %s", keep)
			}
		}
	})

	t.Run("dom", func(t *testing.T) {
		dom := string(chromium(t, bin, filepath.Join(dir, "profile-dom"), "--dump-dom", url))
		if !strings.Contains(dom, `<table class="heatmap wide" id="heatmap">`) {
			t.Fatal("the DOM has no heat-map table")
		}
		if n := strings.Count(dom, `data-row="`); n != len(r.Observed) {
			t.Errorf("the DOM has %d heat-map rows, want %d", n, len(r.Observed))
		}
		for _, f := range r.Findings {
			if !strings.Contains(dom, `<code class="fid">`+domText(f.ID)+`</code>`) {
				t.Errorf("finding ID %s not in the DOM", f.ID)
			}
			if !strings.Contains(dom, `<p class="summary">`+domText(f.Summary)+`</p>`) {
				t.Errorf("finding summary %q not in the DOM", f.Summary)
			}
		}
		for _, rs := range r.Rules {
			if !strings.Contains(dom, `<code>`+domText(rs.Rule.ID)+`</code>`) {
				t.Errorf("rule %s not in the DOM", rs.Rule.ID)
			}
		}
	})
}

// domText is how Chromium serialises a text node.
func domText(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "\u00a0", "&nbsp;").Replace(s)
}

func distinctColors(img image.Image) int {
	seen := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
		}
	}
	return len(seen)
}

func hasColor(img image.Image, c [3]uint8, tol int) bool {
	b := img.Bounds()
	near := func(v uint32, w uint8) bool {
		d := int(v>>8) - int(w)
		return d >= -tol && d <= tol
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r, c[0]) && near(g, c[1]) && near(bl, c[2]) {
				return true
			}
		}
	}
	return false
}
