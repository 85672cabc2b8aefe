package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// What watch says about a finding over time (docs/WATCH.md).
type eventKind string

const (
	eventOpened      eventKind = "opened"       // first reported, or back after being resolved
	eventEscalated   eventKind = "escalated"    // graver severity, or a graver kind at the same severity
	eventDeescalated eventKind = "de-escalated" // the reverse
	eventResolved    eventKind = "resolved"     // absent from every evaluation for a whole --settle
)

// watchEvent is one change in what watch reports. It is a value, so that
// every sink (the event stream, the log, the metrics) gets the same facts.
type watchEvent struct {
	Time  time.Time
	Event eventKind
	// Finding is the finding as observed now; for resolved, as last observed.
	Finding audit.Finding
	// Previous is the finding before an escalation or de-escalation.
	Previous *audit.Finding
	// FirstReported is when the finding was opened, possibly by an
	// earlier run (state file).
	FirstReported time.Time
	// LastPresent is the last evaluation that had the finding (resolved).
	LastPresent time.Time
}

// openFinding is a finding watch has reported and not yet resolved.
type openFinding struct {
	Key           string        `json:"key"`
	Finding       audit.Finding `json:"finding"`
	FirstReported time.Time     `json:"first_reported"`
	LastChanged   time.Time     `json:"last_changed"`
	LastPresent   time.Time     `json:"last_present"`
	// restored is when a restart restored the finding: its absence is
	// counted from then, not from LastPresent (the restart saw nothing
	// before it).
	restored time.Time
}

// absentSince is when the finding's current absence began at the latest.
func (o *openFinding) absentSince() time.Time {
	if o.restored.After(o.LastPresent) {
		return o.restored
	}
	return o.LastPresent
}

// tracker turns successive audit reports into events. It never reads a
// clock: every evaluation gives its own time.
type tracker struct {
	settle time.Duration
	open   map[string]*openFinding
	// alerting holds the subjects open at low or above at some point of
	// this run, restored ones included: watch's exit code.
	alerting map[string]bool
}

func newTracker(settle time.Duration) *tracker {
	return &tracker{settle: settle, open: map[string]*openFinding{}, alerting: map[string]bool{}}
}

// heldBack reports the findings that need a full window to be fair: they
// are not reported before --settle has passed.
func heldBack(f *audit.Finding) bool {
	return f.Kind == audit.MissingRequired || f.ID == "audit-incomplete/short-window"
}

// family groups the kinds one subject moves between: an undocumented
// inbound port is attempted (undocumented-flow), then listens or answers
// (unexpected-open-port); a required rule is missing, closed or filtered.
// Every other kind is a family of its own, so that findings that can
// coexist on one port (peer-out-of-zone next to missing-required) stay
// apart.
func family(k audit.Kind) string {
	switch k {
	case audit.UndocumentedFlow, audit.UnexpectedOpenPort:
		return "exposure"
	case audit.MissingRequired, audit.RequiredPortClosed, audit.RequiredPortFiltered:
		return "requirement"
	}
	return string(k)
}

// subjectKey names what a finding is about, independently of its kind
// within a family: the finding IDs embed the kind, so a port going from
// undocumented-flow to unexpected-open-port changes ID but not subject.
// Findings without a service (audit-incomplete, scan-suspected) are their
// ID.
func subjectKey(f *audit.Finding) string {
	if f.Proto == "" {
		return "id:" + f.ID
	}
	rule := ""
	if f.Rule != nil {
		rule = f.Rule.ID
	}
	return strings.Join([]string{family(f.Kind), f.Direction.String(), f.Proto, f.Port, rule}, "|")
}

// kindRank orders kinds at equal severity: the earlier in the report
// order (audit.Kinds), the graver.
func kindRank(k audit.Kind) int {
	if i := slices.Index(audit.Kinds, k); i >= 0 {
		return len(audit.Kinds) - i
	}
	return 0
}

// graver compares two findings: > 0 when a is graver than b, < 0 when
// lesser, 0 when the same. Severity decides; at equal severity the kind.
func graver(a, b *audit.Finding) int {
	if a.Severity != b.Severity {
		return int(a.Severity) - int(b.Severity)
	}
	return kindRank(a.Kind) - kindRank(b.Kind)
}

// observe takes the findings of one evaluation at now and returns the
// events: opened and changed findings by ID, then resolved ones by ID. Unless settled, held-back findings neither
// open nor change anything, but they keep an open finding of the same
// subject from being resolved.
func (t *tracker) observe(now time.Time, findings []audit.Finding, settled bool) []watchEvent {
	keys := t.assignKeys(findings)
	order := make([]int, len(findings))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return findings[order[i]].ID < findings[order[j]].ID })

	var evs []watchEvent
	present := map[string]bool{}
	for _, i := range order {
		f, k := findings[i], keys[i]
		o := t.open[k]
		if !settled && heldBack(&f) {
			if o != nil {
				o.LastPresent = now
				present[k] = true
			}
			continue
		}
		present[k] = true
		if o == nil {
			t.open[k] = &openFinding{Key: k, Finding: f, FirstReported: now, LastChanged: now, LastPresent: now}
			evs = append(evs, watchEvent{Time: now, Event: eventOpened, Finding: f, FirstReported: now})
		} else {
			prev := o.Finding
			o.Finding, o.LastPresent = f, now
			if c := graver(&f, &prev); c != 0 {
				ev := watchEvent{Time: now, Event: eventEscalated, Finding: f, Previous: &prev, FirstReported: o.FirstReported}
				if c < 0 {
					ev.Event = eventDeescalated
				}
				o.LastChanged = now
				evs = append(evs, ev)
			}
		}
		if f.Severity >= audit.Low {
			t.alerting[k] = true
		}
	}
	var gone []string
	for k, o := range t.open {
		if !present[k] && now.Sub(o.absentSince()) >= t.settle {
			gone = append(gone, k)
		}
	}
	sort.Slice(gone, func(i, j int) bool { return t.open[gone[i]].Finding.ID < t.open[gone[j]].Finding.ID })
	for _, k := range gone {
		o := t.open[k]
		delete(t.open, k)
		evs = append(evs, watchEvent{Time: now, Event: eventResolved, Finding: o.Finding, FirstReported: o.FirstReported, LastPresent: o.LastPresent})
	}
	return evs
}

// assignKeys gives every finding its subject key. The engine never
// reports two findings of one subject; should it, the one already open
// under that key (else the gravest) keeps it and the others are tracked
// by their ID.
func (t *tracker) assignKeys(findings []audit.Finding) []string {
	keys := make([]string, len(findings))
	groups := map[string][]int{}
	for i := range findings {
		keys[i] = subjectKey(&findings[i])
		groups[keys[i]] = append(groups[keys[i]], i)
	}
	for k, idx := range groups {
		if len(idx) < 2 {
			continue
		}
		keep := -1
		if o := t.open[k]; o != nil {
			for _, i := range idx {
				if findings[i].ID == o.Finding.ID {
					keep = i
				}
			}
		}
		if keep < 0 {
			keep = idx[0]
			for _, i := range idx[1:] {
				if c := graver(&findings[i], &findings[keep]); c > 0 || (c == 0 && findings[i].ID < findings[keep].ID) {
					keep = i
				}
			}
		}
		for _, i := range idx {
			if i != keep {
				keys[i] = "id:" + findings[i].ID
			}
		}
	}
	return keys
}

// openCount is how many findings are open.
func (t *tracker) openCount() int { return len(t.open) }

// openFindings returns the open findings as last observed, by ID.
func (t *tracker) openFindings() []audit.Finding {
	out := make([]audit.Finding, 0, len(t.open))
	for _, o := range t.open {
		out = append(out, o.Finding)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// The state file: what a watch had reported and not resolved when it last
// wrote, so that a restart does not report it again.
const (
	stateFormat   = "flowaudit-watch-state/1"
	stateFileName = "watch-state.json"
	stateLockName = "watch-state.lock"
)

// Sentinel errors of loadState.
var (
	errStateCorrupt  = errors.New("watch state file unusable")
	errStateMismatch = errors.New("watch state file belongs to another watch")
)

// watchScope is what a state file's findings belong to: findings of one
// matrix, role and set of interfaces say nothing about another.
type watchScope struct {
	Product    string   `json:"product"`
	Version    string   `json:"version"`
	Edition    string   `json:"edition,omitempty"` // of the vendor document (USM)
	Role       string   `json:"role"`
	Conditions []string `json:"conditions"`
	Ifaces     []string `json:"ifaces"`
}

func newScope(product, version, role string, conditions, ifaces []string) watchScope {
	s := watchScope{Product: product, Version: version, Role: role,
		Conditions: append([]string{}, conditions...), Ifaces: append([]string{}, ifaces...)}
	sort.Strings(s.Conditions)
	sort.Strings(s.Ifaces)
	s.Ifaces = slices.Compact(s.Ifaces)
	return s
}

func (s watchScope) equal(o watchScope) bool {
	return s.Product == o.Product && s.Version == o.Version && s.Edition == o.Edition && s.Role == o.Role &&
		slices.Equal(s.Conditions, o.Conditions) && slices.Equal(s.Ifaces, o.Ifaces)
}

func (s watchScope) String() string {
	c := ""
	if len(s.Conditions) > 0 {
		c = " [" + strings.Join(s.Conditions, ",") + "]"
	}
	ed := ""
	if s.Edition != "" {
		ed = "#" + s.Edition
	}
	return fmt.Sprintf("%s@%s%s role %s%s on %s", s.Product, s.Version, ed, s.Role, c, strings.Join(s.Ifaces, ","))
}

type watchState struct {
	Format   string         `json:"format"`
	Scope    watchScope     `json:"scope"`
	Written  time.Time      `json:"written"`
	Findings []*openFinding `json:"findings"`
}

// saveState writes the open findings of t to path atomically.
func saveState(path string, scope watchScope, t *tracker, now time.Time) error {
	st := watchState{Format: stateFormat, Scope: scope, Written: now.UTC(), Findings: []*openFinding{}}
	for _, o := range t.open {
		st.Findings = append(st.Findings, o)
	}
	sort.Slice(st.Findings, func(i, j int) bool { return st.Findings[i].Key < st.Findings[j].Key })
	return snapshot.AtomicWrite(path, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(&st)
	})
}

// loadState reads a state file. A missing file is (nil, nil); a file
// that does not parse or validate wraps errStateCorrupt; one of another
// scope wraps errStateMismatch; any other error is an I/O failure.
func loadState(path string, scope watchScope) (*watchState, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read watch state: %w", err)
	}
	corrupt := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", errStateCorrupt, path, fmt.Sprintf(format, a...))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var st watchState
	if err := dec.Decode(&st); err != nil {
		return nil, corrupt("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, corrupt("data after the JSON object")
	}
	if st.Format != stateFormat {
		return nil, corrupt("format %q, want %q", st.Format, stateFormat)
	}
	seen := map[string]bool{}
	for i, o := range st.Findings {
		switch {
		case o == nil:
			return nil, corrupt("findings[%d] is null", i)
		case o.Finding.ID == "":
			return nil, corrupt("findings[%d] has no id", i)
		case !slices.Contains(audit.Kinds, o.Finding.Kind):
			return nil, corrupt("findings[%d] (%s): unknown kind %q", i, o.Finding.ID, o.Finding.Kind)
		case o.Key != subjectKey(&o.Finding) && o.Key != "id:"+o.Finding.ID:
			return nil, corrupt("findings[%d] (%s): key %q does not match the finding", i, o.Finding.ID, o.Key)
		case seen[o.Key]:
			return nil, corrupt("findings[%d] (%s): key %q twice", i, o.Finding.ID, o.Key)
		case o.FirstReported.IsZero():
			return nil, corrupt("findings[%d] (%s): no first_reported", i, o.Finding.ID)
		}
		seen[o.Key] = true
	}
	if !st.Scope.equal(scope) {
		return &st, fmt.Errorf("%w: %s holds findings of %s, this watch is %s", errStateMismatch, path, st.Scope, scope)
	}
	return &st, nil
}

// restore makes the findings of st open again at now: each stays open
// until it is absent for a whole --settle from now on.
func (t *tracker) restore(st *watchState, now time.Time) {
	for _, o := range st.Findings {
		c := *o
		c.restored = now
		t.open[c.Key] = &c
		if c.Finding.Severity >= audit.Low {
			t.alerting[c.Key] = true
		}
	}
}

// moveAside renames an unusable state file out of the way, keeping it for
// inspection, and returns the new name.
func moveAside(path, why string, now time.Time) (string, error) {
	dst := path + "." + why + "-" + now.UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(path, dst); err != nil {
		return "", fmt.Errorf("move watch state aside: %w", err)
	}
	return dst, nil
}

// errStateLocked: another watch holds the state directory.
var errStateLocked = errors.New("another flowaudit watch uses this --state-dir")

// lockStateDir takes an exclusive lock on the state directory for the
// life of the process (two watches writing one state file would report
// each other's findings as resolved). The lock file is kept.
func lockStateDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, stateLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--state-dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("--state-dir %s: %w (lock %s)", dir, errStateLocked, path)
		}
		return nil, fmt.Errorf("--state-dir %s: lock %s: %w", dir, path, err)
	}
	return func() { f.Close() }, nil
}

// restoreState loads the state file at path into t. A file that cannot be
// used (corrupt, or of another matrix, role or interface set) is moved
// aside with a warning and every finding is reported afresh: a watch
// reports too much rather than too little. A file that cannot be read or
// moved is an error.
func restoreState(log *zap.Logger, path string, scope watchScope, t *tracker, now time.Time) error {
	st, err := loadState(path, scope)
	switch {
	case err == nil && st == nil:
		log.Info("no watch state yet: every finding is new", zap.String("file", path))
		return nil
	case err == nil:
		t.restore(st, now)
		log.Info("watch state restored: open findings are not reported again", zap.String("file", path),
			zap.Int("open", len(st.Findings)), zap.Time("written", st.Written))
		return nil
	case errors.Is(err, errStateCorrupt), errors.Is(err, errStateMismatch):
		why := "corrupt"
		if errors.Is(err, errStateMismatch) {
			why = "other-scope"
		}
		dst, merr := moveAside(path, why, now)
		if merr != nil {
			return fmt.Errorf("%v; %w", err, merr)
		}
		log.Warn("watch state not used, moved aside: every finding is reported afresh", zap.String("file", path),
			zap.String("moved_to", dst), zap.Error(err))
		return nil
	}
	return err
}
