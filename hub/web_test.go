package hub

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"fieldsync/internal/cli"
	"fieldsync/protocol"
)

// seedDemo builds the small picture the dashboard tests look at: two sites,
// a few pledges, one damaged delivery and one short confirmation.
func seedDemo(t *testing.T) *testHub {
	t.Helper()
	th := newTestHub(t)
	kv := th.site("UA-KV-017", "Kyiv substation 17", "Kyiv", "energy")
	th.setNow(testNow.Add(-50 * time.Hour))
	lv := th.site("UA-LV-004", "Lviv water pumping station 4", "Lviv", "water")
	th.setNow(testNow)
	fw := th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindHardware, "FortiGate 100F firewall", 4)
	tr := th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindTraining, "OT incident response", 12)
	sv := th.pledge("UA-LV-004", "Netherlands", "Cyber Coalition", protocol.KindHardware, "Dell PowerEdge R650 server", 2)
	th.pledge("UA-LV-004", "Netherlands", "Cyber Coalition", protocol.KindSoftware, "EDR licence (1 year)", 50)

	c := confirmation(fw, 4, 0, "")
	c.Serials = []string{"FGT100F-A1", "FGT100F-A2", "FGT100F-A3", "FGT100F-A4"}
	c.Waybill = "WB-2026-1142"
	th.send(kv, c, protocol.Record{Type: protocol.TypeTraining, Course: "OT incident response", Date: "2026-11-20", Attendees: 12, Provider: "CERT-EE", Pledge: tr})
	th.setNow(testNow.Add(-50 * time.Hour))
	d := delivery("Dell PowerEdge R650 server", 1, sv)
	d.Condition, d.Note, d.Serials = protocol.ConditionDamaged, "chassis dented in transit", []string{"SRV-R650-77"}
	th.hello(lv, testNow.Add(-52*time.Hour))
	th.send(lv, d, confirmation(sv, 1, 1, protocol.RejectShort))
	th.setNow(testNow)
	return th
}

// webClient talks to a test server; it does not follow redirects, so that
// tests see them.
func webClient(t *testing.T, srv *httptest.Server) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client()
	c.Jar = jar
	c.Timeout = 10 * time.Second
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

type response struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, u string, header http.Header, form url.Values) response {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// login logs c in through the form, as a browser does.
func login(t *testing.T, c *http.Client, base, token string) {
	t.Helper()
	r := do(t, c, "GET", base+"/login", nil, nil)
	m := csrfRE.FindStringSubmatch(r.body)
	if r.code != http.StatusOK || m == nil {
		t.Fatalf("GET /login: %d, no csrf field in %q", r.code, r.body)
	}
	r = do(t, c, "POST", base+"/login", http.Header{"Origin": {base}}, url.Values{"token": {token}, "csrf": {m[1]}, "next": {"/"}})
	if r.code != http.StatusSeeOther || r.header.Get("Location") != "/" {
		t.Fatalf("POST /login: %d to %q, want 303 to /; body %q", r.code, r.header.Get("Location"), r.body)
	}
}

// secrets that must never appear in a response to someone without the
// token: site names, donors, items.
var secrets = []string{"UA-KV-017", "Kyiv substation", "Estonia", "Netherlands", "FortiGate", "R650"}

func assertNoData(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(body, s) {
			t.Errorf("%s: body shows %q without the token:\n%s", what, s, body)
		}
	}
}

func TestWebNeedsToken(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	noCookie := http.Header{"Cookie": {sessionCookie + "=" + th.Token()}}

	tests := []struct {
		name   string
		path   string
		header http.Header
		code   int
		to     string // redirect target, for pages
	}{
		{"overview", "/", nil, http.StatusSeeOther, "/login?next=%2F"},
		{"site page", "/sites/UA-KV-017", nil, http.StatusSeeOther, "/login?next=%2Fsites%2FUA-KV-017"},
		{"donors", "/donors?donor=Estonia", nil, http.StatusSeeOther, "/login?next=%2Fdonors%3Fdonor%3DEstonia"},
		{"discrepancies", "/discrepancies", nil, http.StatusSeeOther, "/login?next=%2Fdiscrepancies"},
		{"agents", "/agents", nil, http.StatusSeeOther, "/login?next=%2Fagents"},
		{"logout form", "/logout", nil, http.StatusSeeOther, "/login?next=%2Flogout"},
		{"page with the token as bearer", "/", bearer(th.Token()), http.StatusSeeOther, "/login?next=%2F"},
		{"page with the token as cookie", "/", noCookie, http.StatusSeeOther, "/login?next=%2F"},
		{"status", "/api/v1/status", nil, http.StatusUnauthorized, ""},
		{"status, wrong token", "/api/v1/status", bearer("not-the-token"), http.StatusUnauthorized, ""},
		{"status, token prefix", "/api/v1/status", bearer(th.Token()[:10]), http.StatusUnauthorized, ""},
		{"status, basic auth", "/api/v1/status", http.Header{"Authorization": {"Basic " + th.Token()}}, http.StatusUnauthorized, ""},
		{"status, token in cookie", "/api/v1/status", noCookie, http.StatusUnauthorized, ""},
		{"status, token in query", "/api/v1/status?token=" + th.Token(), nil, http.StatusUnauthorized, ""},
		{"export", "/api/v1/export?format=csv", nil, http.StatusUnauthorized, ""},
		{"export, wrong token", "/api/v1/export?format=hxl", bearer("x"), http.StatusUnauthorized, ""},
		{"unknown API", "/api/v1/sites", nil, http.StatusUnauthorized, ""},
		{"metrics", "/metrics", nil, http.StatusUnauthorized, ""},
		{"metrics, wrong token", "/metrics", bearer("x"), http.StatusUnauthorized, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, c, "GET", srv.URL+tt.path, tt.header, nil)
			if r.code != tt.code {
				t.Fatalf("GET %s: %d, want %d", tt.path, r.code, tt.code)
			}
			if tt.to != "" && r.header.Get("Location") != tt.to {
				t.Errorf("redirect to %q, want %q", r.header.Get("Location"), tt.to)
			}
			if tt.code == http.StatusUnauthorized {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
					t.Errorf("401 body is not a JSON error: %q", r.body)
				}
				if r.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
			assertNoData(t, tt.path, r.body)
		})
	}
}

func TestWebSecurityHeaders(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	for _, path := range []string{"/", "/login", "/api/v1/status", "/nope"} {
		r := do(t, c, "GET", srv.URL+path, nil, nil)
		for k, want := range map[string]string{
			"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
			"X-Content-Type-Options":  "nosniff",
			"X-Frame-Options":         "DENY",
			"Referrer-Policy":         "same-origin",
			"Cache-Control":           "no-store",
		} {
			if got := r.header.Get(k); !strings.HasPrefix(got, want) {
				t.Errorf("GET %s: %s = %q, want %q", path, k, got, want)
			}
		}
	}
}

func TestWebPages(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	login(t, c, srv.URL, th.Token())

	tests := []struct {
		path string
		code int
		want []string
	}{
		{"/", 200, []string{"Overview", "Kyiv substation 17", "Lviv water pumping station 4", "Estonia", "Tallinn Mechanism",
			"Delivery progress by donor", "Sync freshness by site", "<svg", "damaged", "2 days ago", "just now"}},
		{"/sites/UA-LV-004", 200, []string{"Lviv water pumping station 4", "Dell PowerEdge R650 server", "disputed", "chassis dented in transit",
			"1 rejected at confirmation: short", "arrived damaged"}},
		{"/sites/UA-NOPE", 404, []string{"No such site"}},
		{"/donors", 200, []string{"Estonia", "Netherlands", "Cyber Coalition", "EDR licence (1 year)", "<svg"}},
		{"/donors?donor=Netherlands", 200, []string{"Netherlands", "Dell PowerEdge R650 server"}},
		{"/discrepancies", 200, []string{"damaged", "short", "UA-LV-004"}},
		{"/discrepancies?kind=short", 200, []string{"1 rejected at confirmation: short"}},
		{"/agents", 200, []string{"UA-KV-017", "UA-LV-004", "active", "Quarantined bundles"}},
		{"/logout", 200, []string{"End this dashboard session?"}},
		{"/login", 303, nil}, // already logged in
		{"/nope", 404, []string{"Not found"}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := do(t, c, "GET", srv.URL+tt.path, nil, nil)
			if r.code != tt.code {
				t.Fatalf("GET %s: %d, want %d\n%s", tt.path, r.code, tt.code, r.body)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.body, w) {
					t.Errorf("GET %s: no %q in the page", tt.path, w)
				}
			}
			if tt.code == 200 && !strings.Contains(r.header.Get("Content-Type"), "text/html") {
				t.Errorf("Content-Type = %q", r.header.Get("Content-Type"))
			}
			if strings.Contains(r.body, "<script") {
				t.Error("the page has a script")
			}
		})
	}
	// A donor's page lists that donor's pledges only.
	if r := do(t, c, "GET", srv.URL+"/donors?donor=Netherlands", nil, nil); strings.Contains(r.body, "FortiGate") {
		t.Error("the Netherlands page lists Estonia's pledge")
	}
}

func TestWebEscapes(t *testing.T) {
	th := newTestHub(t)
	const evil = `<script>alert("x")</script>&<b>`
	a := th.site("UA-X-1", evil, evil, "energy")
	p := th.pledge("UA-X-1", evil, evil, protocol.KindHardware, evil, 1)
	r := delivery(evil, 2, p)
	r.Note = evil
	th.send(a, r)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	login(t, c, srv.URL, th.Token())
	for _, path := range []string{"/", "/sites/UA-X-1", "/donors", "/donors?donor=" + url.QueryEscape(evil), "/discrepancies", "/agents"} {
		got := do(t, c, "GET", srv.URL+path, nil, nil)
		if got.code != 200 {
			t.Fatalf("GET %s: %d", path, got.code)
		}
		if strings.Contains(got.body, "<script") || strings.Contains(got.body, evil) {
			t.Errorf("GET %s: unescaped markup from the data:\n%s", path, got.body)
		}
		if shows := !strings.Contains(path, "discrepancies") && path != "/agents"; shows && !strings.Contains(got.body, "&lt;script&gt;") {
			t.Errorf("GET %s: the escaped name is missing", path)
		}
	}
}

// TestAPIMatchesCLI checks that the API's documents are the CLI's: the
// status as `hub status --json` prints it, the exports as `hub export`
// writes them.
func TestAPIMatchesCLI(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	auth := bearer(th.Token())

	for _, f := range []StatusFilter{{}, {Site: "UA-LV-004"}, {Donor: "Estonia"}, {Site: "UA-NOPE"}} {
		q := url.Values{}
		if f.Site != "" {
			q.Set("site", f.Site)
		}
		if f.Donor != "" {
			q.Set("donor", f.Donor)
		}
		r := do(t, c, "GET", srv.URL+"/api/v1/status?"+q.Encode(), auth, nil)
		if r.code != 200 || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("status %+v: %d %q", f, r.code, r.header.Get("Content-Type"))
		}
		var want bytes.Buffer
		if err := cli.PrintJSON(&want, th.status(f)); err != nil {
			t.Fatal(err)
		}
		if r.body != want.String() {
			t.Errorf("status %+v: the API's document differs from `hub status --json`:\n got %s\nwant %s", f, r.body, want.String())
		}
	}

	for _, format := range []string{"csv", "hxl", "json"} {
		r := do(t, c, "GET", srv.URL+"/api/v1/export?format="+format, auth, nil)
		if r.code != 200 {
			t.Fatalf("export %s: %d %s", format, r.code, r.body)
		}
		path := filepath.Join(t.TempDir(), "export."+format)
		if _, err := th.Export(format, path); err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if r.body != string(want) {
			t.Errorf("export %s: the API's bytes differ from `hub export`:\n got %s\nwant %s", format, r.body, want)
		}
		if !strings.HasPrefix(r.header.Get("Content-Disposition"), "attachment; filename=\"fieldsync-20261123") {
			t.Errorf("export %s: Content-Disposition %q", format, r.header.Get("Content-Disposition"))
		}
	}
	if r := do(t, c, "GET", srv.URL+"/api/v1/export?format=xlsx", auth, nil); r.code != http.StatusBadRequest || !strings.Contains(r.body, "use format=csv, json or hxl") {
		t.Errorf("export xlsx: %d %s", r.code, r.body)
	}
	if r := do(t, c, "POST", srv.URL+"/api/v1/status", auth, url.Values{}); r.code != http.StatusMethodNotAllowed {
		t.Errorf("POST status: %d, want 405", r.code)
	}

	// A dashboard session reads the API too (the export links), but not
	// /metrics.
	login(t, c, srv.URL, th.Token())
	if r := do(t, c, "GET", srv.URL+"/api/v1/status", nil, nil); r.code != 200 {
		t.Errorf("status with a session: %d", r.code)
	}
	if r := do(t, c, "GET", srv.URL+"/metrics", nil, nil); r.code != http.StatusUnauthorized {
		t.Errorf("metrics with a session: %d, want 401", r.code)
	}
}

func TestMetrics(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	r := do(t, c, "GET", srv.URL+"/metrics", bearer(th.Token()), nil)
	if r.code != 200 {
		t.Fatalf("GET /metrics: %d", r.code)
	}
	for _, want := range []string{
		`fieldsync_site_last_sync_seconds{site="UA-KV-017"} 0`,
		`fieldsync_site_last_sync_seconds{site="UA-LV-004"} 180000`,
		`fieldsync_site_oldest_unsynced_seconds{site="UA-LV-004"} 187200`,
		`fieldsync_site_oldest_unsynced_seconds{site="UA-KV-017"} 0`,
		`fieldsync_site_agent_state{site="UA-KV-017",state="active"} 1`,
		`fieldsync_site_agent_state{site="UA-KV-017",state="silent"} 0`,
		"# TYPE fieldsync_records_applied_total counter",
		"# TYPE fieldsync_bytes_received_total counter",
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("no %q in /metrics:\n%s", want, r.body)
		}
	}
}

func TestLoginCSRF(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()

	fresh := func(t *testing.T) (*http.Client, string) {
		c := webClient(t, srv)
		r := do(t, c, "GET", srv.URL+"/login", nil, nil)
		m := csrfRE.FindStringSubmatch(r.body)
		if m == nil {
			t.Fatalf("no csrf field in %q", r.body)
		}
		return c, m[1]
	}
	tests := []struct {
		name   string
		header http.Header
		form   func(csrf string) url.Values
		noJar  bool // send no cookies
		code   int
	}{
		{"no csrf field", nil, func(string) url.Values { return url.Values{"token": {th.Token()}} }, false, http.StatusForbidden},
		{"wrong csrf field", nil, func(string) url.Values { return url.Values{"token": {th.Token()}, "csrf": {"x.1.y"}} }, false, http.StatusForbidden},
		{"csrf field without its cookie", nil, func(c string) url.Values { return url.Values{"token": {th.Token()}, "csrf": {c}} }, true, http.StatusForbidden},
		{"from another site (Sec-Fetch-Site)", http.Header{"Sec-Fetch-Site": {"cross-site"}},
			func(c string) url.Values { return url.Values{"token": {th.Token()}, "csrf": {c}} }, false, http.StatusForbidden},
		{"from another origin", http.Header{"Origin": {"http://evil.example"}},
			func(c string) url.Values { return url.Values{"token": {th.Token()}, "csrf": {c}} }, false, http.StatusForbidden},
		{"wrong token", nil, func(c string) url.Values { return url.Values{"token": {"guess"}, "csrf": {c}} }, false, http.StatusUnauthorized},
		{"right token and csrf", http.Header{"Sec-Fetch-Site": {"same-origin"}},
			func(c string) url.Values { return url.Values{"token": {th.Token()}, "csrf": {c}} }, false, http.StatusSeeOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, tok := fresh(t)
			if tt.noJar {
				c.Jar = nil
			}
			r := do(t, c, "POST", srv.URL+"/login", tt.header, tt.form(tok))
			if r.code != tt.code {
				t.Fatalf("POST /login: %d, want %d\n%s", r.code, tt.code, r.body)
			}
			gotSession := false
			for _, sc := range r.header.Values("Set-Cookie") {
				if strings.HasPrefix(sc, sessionCookie+"=") {
					gotSession = true
				}
			}
			if gotSession != (tt.code == http.StatusSeeOther) {
				t.Errorf("session cookie set: %v", gotSession)
			}
			if tt.code != http.StatusSeeOther {
				assertNoData(t, tt.name, r.body)
				if r := do(t, c, "GET", srv.URL+"/", nil, nil); r.code != http.StatusSeeOther {
					t.Errorf("after a refused login, GET / = %d, want a redirect to /login", r.code)
				}
			}
		})
	}
}

func TestSessionCookie(t *testing.T) {
	th := seedDemo(t)
	for _, useTLS := range []bool{false, true} {
		name := "http"
		if useTLS {
			name = "https"
		}
		t.Run(name, func(t *testing.T) {
			var srv *httptest.Server
			if useTLS {
				srv = httptest.NewTLSServer(th.Handler())
			} else {
				srv = httptest.NewServer(th.Handler())
			}
			defer srv.Close()
			c := webClient(t, srv)
			r := do(t, c, "GET", srv.URL+"/login", nil, nil)
			csrf := csrfRE.FindStringSubmatch(r.body)[1]
			r = do(t, c, "POST", srv.URL+"/login", nil, url.Values{"token": {th.Token()}, "csrf": {csrf}, "next": {"//evil.example/x"}})
			if r.code != http.StatusSeeOther || r.header.Get("Location") != "/" {
				t.Errorf("login with an outside next: %d to %q, want 303 to /", r.code, r.header.Get("Location"))
			}
			var sc *http.Cookie
			for _, ck := range (&http.Response{Header: r.header}).Cookies() {
				if ck.Name == sessionCookie {
					sc = ck
				}
			}
			if sc == nil {
				t.Fatal("no session cookie")
			}
			if !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Secure != useTLS || sc.Path != "/" {
				t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Secure=%v, Path=/", sc, useTLS)
			}
			if strings.Contains(sc.Value, th.Token()) || len(sc.Value) < 40 {
				t.Errorf("session cookie value %q carries the token or is short", sc.Value)
			}
		})
	}
}

func TestLogout(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	login(t, c, srv.URL, th.Token())
	page := do(t, c, "GET", srv.URL+"/", nil, nil)
	m := csrfRE.FindStringSubmatch(page.body)
	if m == nil {
		t.Fatal("no logout form with a csrf field on the overview")
	}
	if r := do(t, c, "POST", srv.URL+"/logout", nil, url.Values{}); r.code != http.StatusForbidden {
		t.Errorf("logout without csrf: %d, want 403", r.code)
	}
	if r := do(t, c, "GET", srv.URL+"/", nil, nil); r.code != 200 {
		t.Fatalf("after a refused logout, GET / = %d, want 200", r.code)
	}
	if r := do(t, c, "POST", srv.URL+"/logout", nil, url.Values{"csrf": {m[1]}}); r.code != http.StatusSeeOther || r.header.Get("Location") != "/login" {
		t.Errorf("logout: %d to %q", r.code, r.header.Get("Location"))
	}
	if r := do(t, c, "GET", srv.URL+"/", nil, nil); r.code != http.StatusSeeOther {
		t.Errorf("after logout, GET / = %d, want a redirect", r.code)
	}
}

func TestSessionExpires(t *testing.T) {
	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler())
	defer srv.Close()
	c := webClient(t, srv)
	login(t, c, srv.URL, th.Token())
	th.setNow(testNow.Add(SessionLifetime + time.Minute))
	if r := do(t, c, "GET", srv.URL+"/", nil, nil); r.code != http.StatusSeeOther {
		t.Errorf("after the session's lifetime, GET / = %d, want a redirect to /login", r.code)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"":                     "/",
		"/":                    "/",
		"/sites/UA-KV-017":     "/sites/UA-KV-017",
		"/donors?donor=X":      "/donors?donor=X",
		"//evil.example":       "/",
		"/\\evil.example":      "/",
		"https://evil.example": "/",
		"sites":                "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}
