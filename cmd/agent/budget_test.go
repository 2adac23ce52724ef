package main

import "testing"

func TestBudgetFlag(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"5MB/day", 5 << 20, false},
		{"5mb", 5 << 20, false},
		{"500kB/day", 500 << 10, false},
		{"1.5GB", 3 << 29, false},
		{"2048", 2048, false},
		{"0", 0, false},
		{"lots", 0, true},
		{"-1MB", 0, true},
		{"MB", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var b budgetFlag
			err := b.Set(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Set(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if !tc.wantErr && int64(b) != tc.want {
				t.Fatalf("Set(%q) = %d, want %d", tc.in, b, tc.want)
			}
		})
	}
}
