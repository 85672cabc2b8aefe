package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// TestSnapshotExport: a compact recording exports to plain JSON (on stdout
// and into a file) that reads back as the same snapshot, and JSON converts
// to compact.
func TestSnapshotExport(t *testing.T) {
	fx, err := snapshot.ReadFile("../../audit/rules/testdata/fixture.snapshot.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	compact := filepath.Join(dir, "snap.fas")
	if err := snapshot.WriteFile(compact, fx); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCatalogCLI(t, "snapshot", "export", "--format", "json", compact)
	if code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var generic map[string]any
	if err := json.Unmarshal([]byte(out), &generic); err != nil {
		t.Fatalf("stdout is not one JSON object: %v", err)
	}
	if flows, _ := generic["flows"].([]any); len(flows) != len(fx.Flows) {
		t.Errorf("JSON holds %d flows, want %d", len(flows), len(fx.Flows))
	}
	js := filepath.Join(dir, "out.json")
	if code, _, errs := runCatalogCLI(t, "snapshot", "export", compact, "--out", js); code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	back, err := snapshot.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, fx) {
		t.Error("compact → JSON export changed the snapshot")
	}
	again := filepath.Join(dir, "again.bin")
	if code, _, errs := runCatalogCLI(t, "snapshot", "export", "--format", "compact", js, "-o", again); code != exitClean {
		t.Fatalf("exit %d: %s", code, errs)
	}
	head, _ := os.ReadFile(again)
	if !snapshot.IsCompact(head) {
		t.Error("--format compact did not write the compact encoding")
	}
	for _, bad := range [][]string{{"snapshot", "export"}, {"snapshot", "import", js}, {"snapshot", "export", "--format", "xml", js}, {"snapshot", "export", filepath.Join(dir, "missing")}} {
		if code, _, _ := runCatalogCLI(t, bad...); code != exitError {
			t.Errorf("%v: exit %d, want %d", bad, code, exitError)
		}
	}
}
