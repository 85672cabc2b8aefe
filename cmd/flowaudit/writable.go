package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// checkWritableFile makes sure path can be written atomically (a temporary
// file in its directory, then a rename) before anything long starts: a
// recording must never be lost at its end to a path that could not be
// written. The flag names the option in the error.
func checkWritableFile(flag, path string) error {
	if path == "" {
		return nil
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s: exists and is not a regular file", flag, path)
	}
	if err := probeDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("%s %s: cannot be written: %w", flag, path, err)
	}
	return nil
}

// checkWritableDir creates dir if needed and makes sure files can be
// created in it.
func checkWritableDir(flag, dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s %s: %w", flag, dir, err)
	}
	if err := probeDir(dir); err != nil {
		return fmt.Errorf("%s %s: cannot be written: %w", flag, dir, err)
	}
	return nil
}

// probeDir creates and removes a temporary file in dir, as AtomicWrite
// will: the only test that also covers read-only mounts, full inode
// tables and permission rules beyond the mode bits.
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, ".flowaudit-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}
