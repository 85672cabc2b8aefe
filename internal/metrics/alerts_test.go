package metrics

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

const alertsDir = "../../deploy/prometheus"

// TestAlertRules: the shipped alerting rules load (promtool check rules)
// and pass their unit tests (promtool test rules): each alert fires on the
// series that should fire it, at the time it should, and not otherwise.
func TestAlertRules(t *testing.T) {
	promtool := promtoolPath(t)
	for _, args := range [][]string{{"check", "rules", "flowaudit-alerts.yml"}, {"test", "rules", "flowaudit-alerts.test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = alertsDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestAlertRulesUseRealMetrics: every flowaudit metric the rules (and
// their tests) name is one the watch exports, so a renamed metric cannot
// leave an alert that never fires.
func TestAlertRulesUseRealMetrics(t *testing.T) {
	m := New(Options{Interval: time.Minute, Datapath: func() (Datapath, error) { return Datapath{}, nil }})
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	// The traffic families appear with their first series.
	for _, n := range []string{"flowaudit_received_packets_total", "flowaudit_received_bytes_total", "flowaudit_sent_packets_total", "flowaudit_sent_bytes_total"} {
		exported[n] = true
	}
	used := map[string]bool{}
	for _, f := range []string{"flowaudit-alerts.yml", "flowaudit-alerts.test.yml"} {
		b, err := os.ReadFile(alertsDir + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range regexp.MustCompile(`\bflowaudit_[a-z_]+`).FindAllString(string(b), -1) {
			used[n] = true
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) < 5 {
		t.Fatalf("the rules name only %v", names)
	}
	for _, n := range names {
		if !exported[n] {
			t.Errorf("the alerting rules use %s, which watch does not export", n)
		}
	}
}
