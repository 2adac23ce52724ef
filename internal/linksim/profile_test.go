package linksim

import (
	"strings"
	"testing"
	"time"
)

func TestProfileByName(t *testing.T) {
	tests := []struct {
		name       string
		delay      time.Duration
		loss       float64
		rate       int64
		every, dur time.Duration
	}{
		{name: "lan", delay: 100 * time.Microsecond},
		{name: "geo", delay: 300 * time.Millisecond, loss: 0.01, rate: 5_000_000},
		{name: "geo-bad", delay: 350 * time.Millisecond, loss: 0.05, rate: 2_000_000},
		{name: "leo", delay: 20 * time.Millisecond, loss: 0.005, rate: 20_000_000, every: 15 * time.Second, dur: 1500 * time.Millisecond},
		{name: "bgan", delay: 400 * time.Millisecond, loss: 0.005, rate: 400_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ProfileByName(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tt.name || p.Delay != tt.delay || p.Loss != tt.loss || p.Rate != tt.rate ||
				p.OutageEvery != tt.every || p.OutageFor != tt.dur {
				t.Errorf("ProfileByName(%q) = %+v", tt.name, p)
			}
			if err := p.Validate(); err != nil {
				t.Error(err)
			}
			if got := p.downlink().Rate; got != tt.rate {
				t.Errorf("downlink rate = %d, want the uplink's %d", got, tt.rate)
			}
		})
	}
	if len(Profiles()) != len(tests) {
		t.Errorf("Profiles() has %d profiles, want %d", len(Profiles()), len(tests))
	}
	if _, err := ProfileByName("dialup"); err == nil || !strings.Contains(err.Error(), "geo-bad") {
		t.Errorf("ProfileByName(dialup) error = %v, want one naming the known profiles", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Profile
		ok   bool
	}{
		{"zero", Profile{}, true},
		{"negative delay", Profile{Delay: -1}, false},
		{"loss one", Profile{Loss: 1}, false},
		{"negative loss", Profile{Loss: -0.1}, false},
		{"negative rate", Profile{Rate: -1}, false},
		{"negative down rate", Profile{DownRate: -1}, false},
		{"outage without period", Profile{OutageFor: time.Second}, false},
		{"outage as long as period", Profile{OutageFor: time.Second, OutageEvery: time.Second}, false},
		{"outage", Profile{OutageFor: time.Second, OutageEvery: 2 * time.Second}, true},
		{"negative first outage", Profile{OutageFor: time.Second, OutageEvery: 2 * time.Second, OutageFirst: -1}, false},
		{"downlink", Profile{Loss: 0.01, Downlink: &Impairments{Delay: time.Second, Loss: 0.1, Rate: 1}}, true},
		{"downlink loss one", Profile{Downlink: &Impairments{Loss: 1}}, false},
		{"downlink and down rate", Profile{DownRate: 1, Downlink: &Impairments{}}, false},
		{"negative downlink jitter", Profile{Downlink: &Impairments{Jitter: -1}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if got := err == nil; got != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestQueueLimit(t *testing.T) {
	tests := []struct {
		name string
		p    Profile
		up   int
		down int
	}{
		{"lan", Profile{}, -1, -1},
		{"geo is one BDP", Profile{Delay: 300 * time.Millisecond, Rate: 5_000_000}, 375_000, 375_000},
		{"bgan is one BDP", Profile{Delay: 400 * time.Millisecond, Rate: 400_000}, 40_000, 40_000},
		{"short delay gets the minimum", Profile{Delay: time.Millisecond, Rate: 1_000_000}, minQueueBytes, minQueueBytes},
		{"fixed", Profile{Rate: 1, QueueBytes: 5000}, 5000, 5000},
		{"unbounded", Profile{Rate: 1, QueueBytes: -1}, -1, -1},
		{"faster downlink", Profile{Delay: 300 * time.Millisecond, Rate: 1_000_000, DownRate: 10_000_000}, 75_000, 750_000},
		{"a downlink of its own", Profile{Delay: 300 * time.Millisecond, Rate: 1_000_000, Downlink: &Impairments{Delay: 100 * time.Millisecond, Rate: 8_000_000}}, 75_000, 200_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, down := tt.p.uplink().queueLimit(), tt.p.downlink().queueLimit()
			if up != tt.up || down != tt.down {
				t.Errorf("queue limits = %d, %d; want %d, %d", up, down, tt.up, tt.down)
			}
		})
	}
}

func TestSchedule(t *testing.T) {
	t0 := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newSchedule(Profile{OutageEvery: 10 * time.Second, OutageFor: 2 * time.Second}, t0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	const sec = time.Second
	tests := []struct {
		name      string
		t         time.Duration
		down      bool
		up        time.Duration
		lastStart time.Duration // -1: none
		next      time.Duration
	}{
		{"start", 0, false, 0, -1, 10 * sec},
		{"before the first", 9 * sec, false, 9 * sec, -1, 10 * sec},
		{"first starts", 10 * sec, true, 12 * sec, 10 * sec, 20 * sec},
		{"inside the first", 11 * sec, true, 12 * sec, 10 * sec, 20 * sec},
		{"first ends", 12 * sec, false, 12 * sec, 10 * sec, 20 * sec},
		{"third", 31 * sec, true, 32 * sec, 30 * sec, 40 * sec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.downAt(at(tt.t)); got != tt.down {
				t.Errorf("downAt = %v, want %v", got, tt.down)
			}
			if got := s.upAt(at(tt.t)); !got.Equal(at(tt.up)) {
				t.Errorf("upAt = %v, want %v", got.Sub(t0), tt.up)
			}
			want := time.Time{}
			if tt.lastStart >= 0 {
				want = at(tt.lastStart)
			}
			if got := s.lastStart(at(tt.t)); !got.Equal(want) {
				t.Errorf("lastStart = %v, want %v", got, want)
			}
			if !tt.down {
				if got := s.next(at(tt.t)); !got.Equal(at(tt.next)) {
					t.Errorf("next = %v, want %v", got.Sub(t0), tt.next)
				}
			}
		})
	}

	hits := []struct {
		a, b time.Duration
		want bool
	}{
		{0, 9 * sec, false},
		{0, 10 * sec, true},
		{9 * sec, 11 * sec, true},
		{11 * sec, 11 * sec, true},
		{12 * sec, 19 * sec, false},
		{12 * sec, 25 * sec, true},
	}
	for _, h := range hits {
		if got := s.hits(at(h.a), at(h.b)); got != h.want {
			t.Errorf("hits(%v, %v) = %v, want %v", h.a, h.b, got, h.want)
		}
	}
	if (schedule{}).hits(t0, t0.Add(time.Hour)) || (schedule{}).downAt(t0) {
		t.Error("a schedule without outages has one")
	}
}

func TestScheduleFirst(t *testing.T) {
	t0 := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	const sec = time.Second
	p := Profile{OutageEvery: 15 * sec, OutageFor: 1500 * time.Millisecond, OutageFirst: 5 * sec}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	s := newSchedule(p, t0)
	tests := []struct {
		t    time.Duration
		down bool
	}{
		{0, false}, {4 * sec, false}, {5 * sec, true}, {6 * sec, true},
		{6500 * time.Millisecond, false}, {15 * sec, false}, {20 * sec, true}, {35 * sec, true},
	}
	for _, tt := range tests {
		if got := s.downAt(at(tt.t)); got != tt.down {
			t.Errorf("downAt(%v) = %v, want %v", tt.t, got, tt.down)
		}
	}
	if got := s.next(t0); !got.Equal(at(5 * sec)) {
		t.Errorf("next(0) = %v, want 5s", got.Sub(t0))
	}
	if got := p.UpAt(t0, at(5*sec)); !got.Equal(at(6500 * time.Millisecond)) {
		t.Errorf("UpAt(5s) = %v, want 6.5s", got.Sub(t0))
	}
}

func TestDownBetween(t *testing.T) {
	t0 := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	const sec = time.Second
	every := Profile{OutageEvery: 10 * sec, OutageFor: 2 * sec}
	first := every
	first.OutageFirst = time.Second
	tests := []struct {
		name string
		p    Profile
		a, b time.Duration
		want time.Duration
	}{
		{"no outages", Profile{}, 0, time.Hour, 0},
		{"before the first", every, 0, 10 * sec, 0},
		{"all of the first", every, 0, 15 * sec, 2 * sec},
		{"starting inside one", every, 11 * sec, 15 * sec, sec},
		{"ending inside one", every, 5 * sec, 11 * sec, sec},
		{"inside one", every, 10500 * time.Millisecond, 11 * sec, 500 * time.Millisecond},
		{"three", every, 0, 35 * sec, 6 * sec},
		{"with a first", first, 0, 12 * sec, 3 * sec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.DownBetween(t0, t0.Add(tt.a), t0.Add(tt.b)); got != tt.want {
				t.Errorf("DownBetween(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
