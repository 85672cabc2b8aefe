package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckWritable(t *testing.T) {
	dir := t.TempDir()
	if err := checkWritableFile("--out", filepath.Join(dir, "snap.json")); err != nil {
		t.Errorf("writable path: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("probe left %d files behind", len(ents))
	}
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "no", "such", "dir", "snap.json"), "no such file or directory"},
		{dir, "not a regular file"},
		// procfs refuses new files even to root: the probe catches what
		// mode bits would not tell root.
		{"/proc/flowaudit-snap.json", "cannot be written"},
	} {
		err := checkWritableFile("--out", c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--out "+c.path) {
			t.Errorf("%s: %v, want an error naming --out and the path, with %q", c.path, err, c.want)
		}
	}
	sub := filepath.Join(dir, "snaps")
	if err := checkWritableDir("--snapshot-dir", sub); err != nil {
		t.Errorf("new directory: %v", err)
	}
	if fi, err := os.Stat(sub); err != nil || !fi.IsDir() {
		t.Errorf("--snapshot-dir not created: %v", err)
	}
	if err := checkWritableDir("--snapshot-dir", "/proc/flowaudit-snaps"); err == nil || !strings.Contains(err.Error(), "--snapshot-dir /proc/flowaudit-snaps") {
		t.Errorf("unwritable directory: %v", err)
	}
}
