// Package deploy holds what installs flowaudit as a service: the systemd
// unit, the .deb's nfpm configuration and scripts. Its test builds the
// package with `make package`, installs it on this machine, checks it and
// removes it again.
package deploy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// run runs a command and fails the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// requirePackaging skips unless the test may install a package here:
// root with dpkg, and no flowaudit package installed already (a real one
// is never replaced). In CI (CI=true) it fails instead of skipping.
func requirePackaging(t *testing.T) {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	skip := func(why string) {
		if ci {
			t.Fatalf("package test required in CI: %s", why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		skip("not root: dpkg -i needs it")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "make", "git", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip(tool + " missing")
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "flowaudit").Output(); err == nil && strings.Contains(string(out), "installed") {
		skip("a flowaudit package is installed on this machine (" + string(out) + "); not touching it")
	}
	if _, err := os.Stat("/usr/bin/flowaudit"); err == nil {
		skip("/usr/bin/flowaudit exists outside any package; not touching it")
	}
}

// exists reports whether path exists (without following a final symlink).
func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestDebVersion: deploy/deb-version.sh maps git describe to a Debian
// version that dpkg accepts and orders as releases should.
func TestDebVersion(t *testing.T) {
	for describe, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"1.2.3":                   "1.2.3",
		"v1.2.3-4-gabc1234":       "1.2.3+git4.gabc1234",
		"v1.2.3-4-gabc1234-dirty": "1.2.3+git4.gabc1234.dirty",
		"v1.2.3-dirty":            "1.2.3.dirty",
		"abc1234":                 "0~gitN.abc1234",
		"5b63389":                 "0~gitN.5b63389", // a hash that starts with a digit is no tag
		"5b63389-dirty":           "0~gitN.5b63389.dirty",
	} {
		out, err := exec.Command("./deb-version.sh", describe).Output()
		if err != nil {
			t.Fatalf("deb-version.sh %s: %v", describe, err)
		}
		got := regexp.MustCompile(`^0~git[0-9]+\.`).ReplaceAllString(strings.TrimSpace(string(out)), "0~gitN.")
		if got != want {
			t.Errorf("deb-version.sh %s = %s, want %s", describe, got, want)
		}
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg missing: versions not compared")
	}
	// An untagged build sorts before any release; later commits after it.
	for _, c := range [][2]string{{"0~git176.5b63389", "0.0.1"}, {"1.2.3", "1.2.3+git4.gabc1234"}, {"1.2.3+git4.gabc1234", "1.2.4"}} {
		if err := exec.Command("dpkg", "--compare-versions", c[0], "lt", c[1]).Run(); err != nil {
			t.Errorf("dpkg: %s is not lower than %s", c[0], c[1])
		}
	}
}

// TestPackageInstallRemove: `make package` builds a .deb holding the
// binary, the unit, the sysusers and logrotate files, the docs and the
// examples, versioned from git describe; dpkg -i installs it (the service
// user is created, /etc/flowaudit is root:flowaudit 0750), the installed
// flowaudit reports that version, systemd-analyze verify accepts the
// installed unit; dpkg -r removes everything but the conffiles, dpkg -P
// those and the service's state and logs too: nothing the package put
// there is left.
func TestPackageInstallRemove(t *testing.T) {
	requirePackaging(t)
	start := time.Now()
	out := t.TempDir()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	describe := strings.TrimSpace(run(t, "git", "-C", root, "describe", "--tags", "--always", "--dirty"))
	run(t, "make", "-C", root, "package", "PKG_OUT="+out)
	debs, _ := filepath.Glob(filepath.Join(out, "flowaudit_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make package made %v, want one flowaudit_*.deb", debs)
	}
	deb := debs[0]
	st, err := os.Stat(deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes, built in %s", filepath.Base(deb), st.Size(), time.Since(start).Round(time.Second))

	// Version: from git describe (deploy/deb-version.sh), valid for dpkg.
	version := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Version"))
	hash := regexp.MustCompile(`g?([0-9a-f]{7,})(-dirty)?$`).FindStringSubmatch(describe)
	tagged := regexp.MustCompile(`^v?[0-9]+\.`).MatchString(describe)
	if hash != nil && !strings.Contains(version, hash[1]) || strings.HasSuffix(describe, "-dirty") != strings.HasSuffix(version, ".dirty") ||
		tagged == strings.HasPrefix(version, "0~git") {
		t.Errorf("package version %q does not follow git describe %q", version, describe)
	}
	run(t, "dpkg", "--validate-version", version)

	// Contents.
	var files, dirs []string
	for _, l := range strings.Split(run(t, "dpkg-deb", "-c", deb), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			continue
		}
		p := strings.TrimPrefix(strings.TrimSuffix(f[5], "/"), ".")
		if p == "" {
			continue
		}
		if strings.HasPrefix(f[0], "d") {
			dirs = append(dirs, p)
		} else {
			files = append(files, p)
		}
	}
	for _, want := range []string{"/usr/bin/flowaudit", "/usr/lib/systemd/system/flowaudit.service",
		"/usr/lib/sysusers.d/flowaudit.conf", "/etc/logrotate.d/flowaudit",
		"/usr/share/doc/flowaudit/copyright", "/usr/share/doc/flowaudit/LICENSE", "/usr/share/doc/flowaudit/README.md",
		"/usr/share/doc/flowaudit/DEPLOY.md", "/usr/share/doc/flowaudit/WATCH.md", "/usr/share/doc/flowaudit/EVENTS.md",
		"/usr/share/doc/flowaudit/events.schema.json", "/usr/share/doc/flowaudit/examples/site.example.yaml",
		"/usr/share/doc/flowaudit/examples/prometheus/flowaudit-alerts.yml", "/etc/flowaudit/flowaudit.yaml",
		"/usr/share/man/man1/flowaudit.1.gz", "/usr/share/man/man1/flowaudit-watch.1.gz",
		"/usr/share/bash-completion/completions/flowaudit", "/usr/share/zsh/vendor-completions/_flowaudit",
		"/usr/share/fish/vendor_completions.d/flowaudit.fish"} {
		if !contains(files, want) {
			t.Errorf("package lacks %s", want)
		}
	}
	// What the package owns alone (its files, and its directories that
	// are not shared system ones) must not be here before it is installed.
	owned := append([]string(nil), files...)
	for _, d := range dirs {
		if strings.Contains(d, "flowaudit") {
			owned = append(owned, d)
		}
	}
	sort.Strings(owned)
	state := []string{"/var/lib/flowaudit", "/var/log/flowaudit"}
	for _, p := range append(owned, state...) {
		if exists(t, p) {
			t.Fatalf("%s exists before the package is installed: not a clean machine for this test", p)
		}
	}
	installed := false
	t.Cleanup(func() {
		if installed {
			exec.Command("dpkg", "-P", "flowaudit").Run() //nolint:errcheck // best effort after a failure
		}
	})

	// Install.
	installed = true
	run(t, "dpkg", "-i", deb)
	if got := run(t, "/usr/bin/flowaudit", "--version"); !strings.Contains(got, describe) {
		t.Errorf("flowaudit --version = %q, want it to name %s", got, describe)
	}
	if got := run(t, "systemd-analyze", "verify", "--man=no", "/usr/lib/systemd/system/flowaudit.service"); strings.TrimSpace(got) != "" {
		t.Errorf("systemd-analyze verify on the installed unit:\n%s", got)
	}
	if _, err := exec.Command("getent", "passwd", "flowaudit").Output(); err != nil {
		t.Errorf("postinst did not create the flowaudit user: %v", err)
	}
	if got := strings.TrimSpace(run(t, "stat", "-c", "%U:%G %a", "/etc/flowaudit")); got != "root:flowaudit 750" {
		t.Errorf("/etc/flowaudit is %s, want root:flowaudit 750", got)
	}
	for _, p := range files {
		if !exists(t, p) {
			t.Errorf("%s not installed", p)
		}
	}
	// What the running service leaves: its state and its event log.
	for _, d := range state {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"/var/lib/flowaudit/watch-state.json", "/var/log/flowaudit/events.json", "/var/log/flowaudit/events.json.1"} {
		if err := os.WriteFile(f, []byte("{}\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}

	// Remove: everything but the conffiles goes.
	run(t, "dpkg", "-r", "flowaudit")
	conffiles := map[string]bool{"/etc/logrotate.d/flowaudit": true, "/etc/flowaudit/flowaudit.yaml": true}
	for _, p := range owned {
		if exists(t, p) && !conffiles[p] && p != "/etc/flowaudit" {
			t.Errorf("%s left after dpkg -r", p)
		}
	}
	for p := range conffiles {
		if !exists(t, p) {
			t.Errorf("dpkg -r removed the conffile %s (only purge should)", p)
		}
	}

	// Purge: nothing left, state and logs included.
	run(t, "dpkg", "-P", "flowaudit")
	installed = false
	for _, p := range append(owned, state...) {
		if exists(t, p) {
			t.Errorf("%s left after dpkg -P", p)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "flowaudit").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Errorf("dpkg still lists flowaudit: %s", out)
	}
	t.Logf("built, installed, checked and purged in %s", time.Since(start).Round(time.Second))
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
