package hub

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParsePledgeCSV(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{"good", "site,donor,programme,kind,item,qty\nUA-KV-017,Estonia,Tallinn Mechanism,hardware,FortiGate 100F,4\nUA-LV-004,Netherlands,,Training,OT incident response,12\n", 2, ""},
		{"columns in any order, BOM", "\ufeffqty,item,kind,donor,site\n3,Switch,hardware,Japan,UA-DP-011\n", 1, ""},
		{"missing column", "site,donor,kind,item\nUA-KV-017,Estonia,hardware,FortiGate\n", 0, `the header has no "qty" column`},
		{"bad qty", "site,donor,kind,item,qty\nUA-KV-017,Estonia,hardware,FortiGate,four\n", 0, `line 2: qty: "four" is not a whole number`},
		{"zero qty", "site,donor,kind,item,qty\nUA-KV-017,Estonia,hardware,FortiGate,0\n", 0, "line 2: qty: must be between 1"},
		{"bad kind", "site,donor,kind,item,qty\nUA-KV-017,Estonia,weapons,Rifle,1\n", 0, `line 2: kind: "weapons" is not one of`},
		{"bad site id", "site,donor,kind,item,qty\nKyiv 17,Estonia,hardware,FortiGate,1\n", 0, "line 2: site:"},
		{"header only", "site,donor,kind,item,qty\n", 0, "no pledges in the file"},
		{"empty", "", 0, "line 1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePledgeCSV(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want {
				t.Fatalf("got %d pledges, want %d", len(got), tc.want)
			}
			for _, p := range got {
				if p.ID != "" {
					t.Errorf("parsed pledge has id %q; ids are the hub's to assign", p.ID)
				}
			}
		})
	}
}

// FuzzParsePledgeCSV feeds arbitrary bytes to the pledge importer: it never
// panics, errors are one line, and every pledge it returns is valid.
func FuzzParsePledgeCSV(f *testing.F) {
	f.Add("site,donor,programme,kind,item,qty\nUA-KV-017,Estonia,Tallinn Mechanism,hardware,FortiGate 100F,4\n")
	f.Add("qty,item,kind,donor,site\n3,\"Switch, 24 port\",hardware,Japan,UA-DP-011\n")
	f.Add("site,donor,kind,item,qty\n\"unterminated\n")
	f.Fuzz(func(t *testing.T, in string) {
		ps, err := ParsePledgeCSV(strings.NewReader(in))
		if err != nil {
			if strings.Contains(err.Error(), "\n") && utf8.ValidString(in) {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		for _, p := range ps {
			p.ID = "P-1"
			if err := p.Validate(); err != nil {
				t.Fatalf("returned an invalid pledge %+v: %v", p, err)
			}
		}
	})
}
