package hub

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"fieldsync/internal/progress"
)

// The dashboard, the JSON API and /metrics all need the operator token
// (DIR/operator.token). The API and /metrics take it as
// `Authorization: Bearer TOKEN`; the dashboard asks for it once at /login
// and then keeps a session: a random session id in an HttpOnly,
// SameSite=Strict cookie, known only to this process (a restart logs
// everyone out). Nothing changes state on GET; the two forms that POST
// (login, logout) carry a CSRF token and must come from the same origin.
// See docs/api.md.

// Limits and lifetimes of the web interface.
const (
	// SessionLifetime is how long a dashboard login lasts.
	SessionLifetime = 12 * time.Hour
	// MaxSessions bounds the sessions kept in memory; past it, the oldest
	// are forgotten.
	MaxSessions = 1000
	// maxFormBytes bounds the body of a form POST.
	maxFormBytes = 8 << 10
	// maxTableRows bounds a table on a page; the export has everything.
	maxTableRows = 500
	// recentRecords is how many records a site page lists.
	recentRecords = 100
	// loginCSRFLifetime is how long a login form can be submitted.
	loginCSRFLifetime = time.Hour
)

// Cookie names.
const (
	sessionCookie   = "fieldsync_session"
	loginCSRFCookie = "fieldsync_login"
)

// Content types of the exports served by the API.
var exportTypes = map[string]string{
	"csv":  "text/csv; charset=utf-8",
	"hxl":  "text/csv; charset=utf-8",
	"json": "application/json",
}

//go:embed templates/*.html
var templateFS embed.FS

// pageNames are the templates/NAME.html files, each rendered inside
// templates/layout.html.
var pageNames = []string{"overview", "site", "donors", "discrepancies", "agents", "login", "logout", "error"}

var pageTemplates = func() map[string]*template.Template {
	m := map[string]*template.Template{}
	for _, name := range pageNames {
		m[name] = template.Must(template.New("layout.html").Funcs(templateFuncs).
			ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return m
}()

var templateFuncs = template.FuncMap{
	"ago": Ago,
	"ts":  func(t time.Time) string { return tsText(t) },
	"when": func(rfc3339 string) string {
		t, err := time.Parse(time.RFC3339, rfc3339)
		if err != nil {
			return rfc3339
		}
		return tsText(t)
	},
	"dash": dashText,
	"siteURL": func(id string) string {
		return "/sites/" + url.PathEscape(id)
	},
	"donorURL": func(d string) string { return "/donors?donor=" + url.QueryEscape(d) },
	"kindURL":  func(k string) string { return "/discrepancies?kind=" + url.QueryEscape(k) },
	"pct": func(a, b int64) int64 {
		if b <= 0 {
			return 0
		}
		return min(100, a*100/b)
	},
	"freshness": func(t, now time.Time) string {
		return freshnessColour(now.Sub(t), t.IsZero())
	},
	"agentColour": func(state string) string {
		switch state {
		case AgentActive:
			return colourFresh
		case AgentSilent, AgentRevoked:
			return colourSilent
		}
		return colourNever
	},
	"stateClass": func(s string) string { return "st-" + strings.ReplaceAll(s, " ", "-") },
	"bytes":      progress.Bytes,
	"colour": func(name string) string {
		return map[string]string{"pledged": colourPledged, "received": colourReceived, "confirmed": colourConfirmed,
			"fresh": colourFresh, "stale": colourStale, "silent": colourSilent, "never": colourNever}[name]
	},
}

func tsText(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func dashText(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// web serves the dashboard, the API and metrics for one hub.
type web struct {
	h       *Hub
	csrfKey []byte // signs login CSRF tokens; random per process

	mu       sync.Mutex
	sessions map[[32]byte]*session // by SHA-256 of the cookie value
}

type session struct {
	csrf    string
	created time.Time
	expires time.Time
}

// Handler returns the hub's HTTP interface: the dashboard pages, the JSON
// API under /api/v1/ and /metrics, all behind the operator token. It is
// what `hub serve --http` serves; see docs/api.md.
func (h *Hub) Handler() http.Handler {
	h.metrics.registerSites(h)
	w := &web{h: h, csrfKey: make([]byte, 32), sessions: map[[32]byte]*session{}}
	rand.Read(w.csrfKey)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", w.page(w.overview))
	mux.HandleFunc("GET /sites/{id}", w.page(w.site))
	mux.HandleFunc("GET /donors", w.page(w.donors))
	mux.HandleFunc("GET /discrepancies", w.page(w.discrepancies))
	mux.HandleFunc("GET /agents", w.page(w.agents))
	mux.HandleFunc("GET /login", w.loginForm)
	mux.HandleFunc("POST /login", w.login)
	mux.HandleFunc("GET /logout", w.page(w.logoutForm))
	mux.HandleFunc("POST /logout", w.logout)
	mux.HandleFunc("GET /api/v1/status", w.api(w.apiStatus))
	mux.HandleFunc("GET /api/v1/export", w.api(w.apiExport))
	mux.HandleFunc("GET /api/", w.api(func(rw http.ResponseWriter, r *http.Request) {
		jsonError(rw, http.StatusNotFound, "no such API endpoint: see docs/api.md")
	}))
	mux.Handle("GET /metrics", w.bearerOnly(promhttp.HandlerFor(h.metrics.reg, promhttp.HandlerOpts{})))
	mux.HandleFunc("GET /", func(rw http.ResponseWriter, r *http.Request) {
		w.render(rw, r, http.StatusNotFound, "error", pageData{Title: "Not found", Message: "There is no such page."})
	})

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.render(rw, r, http.StatusForbidden, "error", pageData{Title: "Refused",
			Message: "This form was sent from another site, so it was refused. Open the dashboard and try again."})
	}))
	return securityHeaders(cop.Handler(mux))
}

// securityHeaders sets what every response carries: no script, no framing,
// no sniffing, no caching of operator data.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		hd := rw.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: with no-referrer some browsers send
		// "Origin: null" on our own form posts.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cache-Control", "no-store")
		next.ServeHTTP(rw, r)
	})
}

// tokenOK compares a presented token with the operator token in constant
// time (hashing first hides the length too).
func (w *web) tokenOK(tok string) bool {
	want := w.h.Token()
	if want == "" || tok == "" {
		return false
	}
	a, b := sha256.Sum256([]byte(tok)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// bearer reports whether the request carries the operator token as a
// bearer token.
func (w *web) bearer(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && w.tokenOK(strings.TrimSpace(tok))
}

func unauthorised(rw http.ResponseWriter) {
	rw.Header().Set("WWW-Authenticate", `Bearer realm="fieldsync hub"`)
	jsonError(rw, http.StatusUnauthorized, "the operator token is needed: send Authorization: Bearer TOKEN (the token is in the hub's DIR/operator.token)")
}

// api guards an API handler: the bearer token, or a dashboard session (so
// the dashboard can link to the exports).
func (w *web) api(next http.HandlerFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		if !w.bearer(r) && w.sessionOf(r) == nil {
			unauthorised(rw)
			return
		}
		next(rw, r)
	}
}

// bearerOnly guards a handler for machines: the bearer token only.
func (w *web) bearerOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !w.bearer(r) {
			unauthorised(rw)
			return
		}
		next.ServeHTTP(rw, r)
	})
}

func jsonError(rw http.ResponseWriter, code int, msg string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	json.NewEncoder(rw).Encode(map[string]string{"error": msg})
}

// writeJSON writes v as the CLI's --json does (internal/cli.PrintJSON), so
// that the API's documents are byte for byte the command line's.
func writeJSON(rw http.ResponseWriter, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		jsonError(rw, http.StatusInternalServerError, err.Error())
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.Write(buf.Bytes())
}

func (w *web) apiStatus(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	st, err := w.h.Status(StatusFilter{Site: q.Get("site"), Donor: q.Get("donor")})
	if err != nil {
		w.h.log.Error("status for the API", "err", err)
		jsonError(rw, http.StatusInternalServerError, "the hub could not compute its status; see its log")
		return
	}
	writeJSON(rw, st)
}

func (w *web) apiExport(rw http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	ctype, ok := exportTypes[format]
	if !ok {
		jsonError(rw, http.StatusBadRequest, fmt.Sprintf("format %q: use format=csv, json or hxl", format))
		return
	}
	rows, err := w.h.Rows()
	var buf bytes.Buffer
	if err == nil {
		err = w.h.WriteExport(&buf, format, rows)
	}
	if err != nil {
		w.h.log.Error("export for the API", "format", format, "err", err)
		jsonError(rw, http.StatusInternalServerError, "the hub could not write the export; see its log")
		return
	}
	name := "fieldsync-" + w.h.now().UTC().Format("20060102")
	if format == "hxl" {
		name += "-hxl.csv"
	} else {
		name += "." + format
	}
	rw.Header().Set("Content-Type", ctype)
	rw.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	rw.Write(buf.Bytes())
}

// Sessions.

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (w *web) newSession() (string, *session) {
	id := randomToken()
	now := w.h.now()
	s := &session{csrf: randomToken(), created: now, expires: now.Add(SessionLifetime)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.sessions) >= MaxSessions {
		for k, old := range w.sessions {
			if now.After(old.expires) {
				delete(w.sessions, k)
			}
		}
		for len(w.sessions) >= MaxSessions {
			var oldest [32]byte
			var first *session
			for k, old := range w.sessions {
				if first == nil || old.created.Before(first.created) {
					oldest, first = k, old
				}
			}
			delete(w.sessions, oldest)
		}
	}
	w.sessions[sha256.Sum256([]byte(id))] = s
	return id, s
}

// sessionOf returns the request's live session, or nil.
func (w *web) sessionOf(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(c.Value))
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.sessions[key]
	if s == nil {
		return nil
	}
	if w.h.now().After(s.expires) {
		delete(w.sessions, key)
		return nil
	}
	return s
}

func (w *web) endSession(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		w.mu.Lock()
		delete(w.sessions, sha256.Sum256([]byte(c.Value)))
		w.mu.Unlock()
	}
}

func cookie(r *http.Request, name, value, path string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: path, MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

// Login CSRF: before there is a session, the login form carries a token
// that is also set as a cookie (double submit), and the token is signed by
// this process so that a cookie planted by a neighbour cannot be forged.

func (w *web) loginCSRF() string {
	nonce := make([]byte, 18)
	rand.Read(nonce)
	exp := w.h.now().Add(loginCSRFLifetime).Unix()
	body := fmt.Sprintf("%s.%d", base64.RawURLEncoding.EncodeToString(nonce), exp)
	return body + "." + w.sign(body)
}

func (w *web) sign(s string) string {
	m := hmac.New(sha256.New, w.csrfKey)
	m.Write([]byte(s))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (w *web) loginCSRFOK(r *http.Request) bool {
	c, err := r.Cookie(loginCSRFCookie)
	form := r.PostFormValue("csrf")
	if err != nil || form == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) != 1 {
		return false
	}
	i := strings.LastIndexByte(form, '.')
	if i < 0 || !hmac.Equal([]byte(w.sign(form[:i])), []byte(form[i+1:])) {
		return false
	}
	var exp int64
	if _, err := fmt.Sscanf(form[strings.LastIndexByte(form[:i], '.')+1:i], "%d", &exp); err != nil {
		return false
	}
	return w.h.now().Unix() <= exp
}

// safeNext returns where to go after login: a path on this site, never
// another site.
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.Contains(next, `\`) || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return next
}

func (w *web) showLogin(rw http.ResponseWriter, r *http.Request, code int, msg string) {
	tok := w.loginCSRF()
	http.SetCookie(rw, cookie(r, loginCSRFCookie, tok, "/login", int(loginCSRFLifetime.Seconds())))
	w.render(rw, r, code, "login", pageData{Title: "Log in", Message: msg,
		Body: loginPage{CSRF: tok, Next: safeNext(r.FormValue("next"))}})
}

type loginPage struct {
	CSRF string
	Next string
}

func (w *web) loginForm(rw http.ResponseWriter, r *http.Request) {
	if w.sessionOf(r) != nil {
		http.Redirect(rw, r, safeNext(r.FormValue("next")), http.StatusSeeOther)
		return
	}
	w.showLogin(rw, r, http.StatusOK, "")
}

func (w *web) login(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		w.showLogin(rw, r, http.StatusBadRequest, "The form could not be read; try again.")
		return
	}
	if !w.loginCSRFOK(r) {
		w.showLogin(rw, r, http.StatusForbidden, "This login form has expired or was not sent from this dashboard. Try again.")
		return
	}
	if !w.tokenOK(strings.TrimSpace(r.PostFormValue("token"))) {
		w.h.log.Warn("dashboard login refused", "remote", r.RemoteAddr)
		w.showLogin(rw, r, http.StatusUnauthorized, "That is not the operator token. It is in the hub's data directory, in operator.token.")
		return
	}
	id, _ := w.newSession()
	http.SetCookie(rw, cookie(r, sessionCookie, id, "/", 0))
	http.SetCookie(rw, cookie(r, loginCSRFCookie, "", "/login", -1))
	w.h.log.Info("dashboard login", "remote", r.RemoteAddr)
	http.Redirect(rw, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (w *web) logoutForm(r *http.Request, s *session) (string, pageData, error) {
	return "logout", pageData{Title: "Log out"}, nil
}

func (w *web) logout(rw http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	s := w.sessionOf(r)
	if s == nil {
		http.Redirect(rw, r, "/login", http.StatusSeeOther)
		return
	}
	if err := r.ParseForm(); err != nil || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1 {
		w.render(rw, r, http.StatusForbidden, "error", pageData{Title: "Refused", CSRF: s.csrf, LoggedIn: true,
			Message: "This form was not sent from this dashboard, so it was refused."})
		return
	}
	w.endSession(r)
	http.SetCookie(rw, cookie(r, sessionCookie, "", "/", -1))
	http.Redirect(rw, r, "/login", http.StatusSeeOther)
}

// Pages.

// pageData is what the layout needs, with the page's own data in Body.
type pageData struct {
	Title     string
	Nav       string // the navigation entry to highlight
	Message   string // a notice at the top of the page
	LoggedIn  bool
	CSRF      string // for the logout button
	Now       time.Time
	Generated time.Time
	Body      any
}

// pageFunc computes a page: the template and its data.
type pageFunc func(r *http.Request, s *session) (string, pageData, error)

// errNotFound from a pageFunc renders a 404.
var errNotFound = errors.New("not found")

// page guards a page with the session, and renders what fn returns.
func (w *web) page(fn pageFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		s := w.sessionOf(r)
		if s == nil {
			// No body: it would only repeat the location.
			rw.Header().Set("Location", "/login?next="+url.QueryEscape(r.URL.RequestURI()))
			rw.WriteHeader(http.StatusSeeOther)
			return
		}
		name, data, err := fn(r, s)
		data.LoggedIn, data.CSRF, data.Now = true, s.csrf, w.h.now().UTC()
		switch {
		case errors.Is(err, errNotFound):
			data.Title = cmp.Or(data.Title, "Not found")
			w.render(rw, r, http.StatusNotFound, "error", data)
			return
		case err != nil:
			w.h.log.Error("dashboard page", "path", r.URL.Path, "err", err)
			w.render(rw, r, http.StatusInternalServerError, "error", pageData{Title: "Error", LoggedIn: true, CSRF: s.csrf,
				Message: "The hub could not compute this page; its log says why."})
			return
		}
		w.render(rw, r, http.StatusOK, name, data)
	}
}

func (w *web) render(rw http.ResponseWriter, r *http.Request, code int, name string, data pageData) {
	if data.Now.IsZero() {
		data.Now = w.h.now().UTC()
	}
	var buf bytes.Buffer
	if err := pageTemplates[name].ExecuteTemplate(&buf, "layout", data); err != nil {
		w.h.log.Error("render page", "page", name, "err", err)
		http.Error(rw, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	rw.WriteHeader(code)
	if r.Method != http.MethodHead {
		rw.Write(buf.Bytes())
	}
}

type overviewPage struct {
	St             *Status
	DonorChart     template.HTML
	FreshnessChart template.HTML
	Discrepancies  []Discrepancy // the latest few
}

func (w *web) overview(r *http.Request, _ *session) (string, pageData, error) {
	st, err := w.h.StatusSummary(10)
	if err != nil {
		return "", pageData{}, err
	}
	p := overviewPage{St: st, DonorChart: donorChart(st.Donors), FreshnessChart: freshnessChart(st.Sites, st.Generated)}
	ds := st.Discrepancies
	p.Discrepancies = slices.Clone(ds[max(0, len(ds)-10):])
	slices.Reverse(p.Discrepancies)
	return "overview", pageData{Title: "Overview", Nav: "overview", Generated: st.Generated, Body: p}, nil
}

type sitePage struct {
	Site    SiteStatus
	St      *Status
	Records []ExportRow // newest first
	More    int         // records not listed
}

func (w *web) site(r *http.Request, _ *session) (string, pageData, error) {
	id := r.PathValue("id")
	st, err := w.h.Status(StatusFilter{Site: id})
	if err != nil {
		return "", pageData{}, err
	}
	i := slices.IndexFunc(st.Sites, func(s SiteStatus) bool { return s.ID == id })
	if i < 0 {
		return "", pageData{Title: "No such site", Nav: "overview", Message: fmt.Sprintf("The hub knows no site %q.", id)}, errNotFound
	}
	rows, err := w.h.rows(id)
	if err != nil {
		return "", pageData{}, err
	}
	slices.SortStableFunc(rows, func(a, b ExportRow) int { return cmp.Or(cmp.Compare(b.At, a.At), cmp.Compare(b.ID, a.ID)) })
	p := sitePage{Site: st.Sites[i], St: st}
	p.Records, p.More = rows[:min(len(rows), recentRecords)], max(0, len(rows)-recentRecords)
	title := cmp.Or(p.Site.Name, id)
	return "site", pageData{Title: title, Nav: "overview", Generated: st.Generated, Body: p}, nil
}

type donorsPage struct {
	St      *Status
	Donor   string // the filter, if any
	Chart   template.HTML
	Pledges []PledgeStatus
	More    int
	All     []string // every donor, for the filter links
}

func (w *web) donors(r *http.Request, _ *session) (string, pageData, error) {
	donor := r.URL.Query().Get("donor")
	st, err := w.h.Status(StatusFilter{Donor: donor})
	if err != nil {
		return "", pageData{}, err
	}
	all := st
	if donor != "" {
		if all, err = w.h.StatusSummary(0); err != nil {
			return "", pageData{}, err
		}
	}
	p := donorsPage{St: st, Donor: donor, Chart: donorChart(st.Donors)}
	for _, d := range all.Donors {
		if len(p.All) == 0 || p.All[len(p.All)-1] != d.Donor {
			p.All = append(p.All, d.Donor)
		}
	}
	p.Pledges = slices.Clone(st.Pledges)
	slices.SortStableFunc(p.Pledges, func(a, b PledgeStatus) int {
		return cmp.Or(cmp.Compare(a.Donor, b.Donor), cmp.Compare(a.Programme, b.Programme), cmp.Compare(a.Site, b.Site))
	})
	p.Pledges, p.More = p.Pledges[:min(len(p.Pledges), maxTableRows)], max(0, len(p.Pledges)-maxTableRows)
	title := "Donors and programmes"
	if donor != "" {
		title = donor
	}
	return "donors", pageData{Title: title, Nav: "donors", Generated: st.Generated, Body: p}, nil
}

type discrepanciesPage struct {
	Kind, Site string
	Kinds      []kindCount
	List       []Discrepancy
	Total      int
	More       int
}

type kindCount struct {
	Kind  string
	Count int
}

func (w *web) discrepancies(r *http.Request, _ *session) (string, pageData, error) {
	q := r.URL.Query()
	p := discrepanciesPage{Kind: q.Get("kind"), Site: q.Get("site")}
	st, err := w.h.Status(StatusFilter{Site: p.Site})
	if err != nil {
		return "", pageData{}, err
	}
	counts := map[string]int{}
	for _, d := range st.Discrepancies {
		counts[d.Kind]++
		if p.Kind == "" || d.Kind == p.Kind {
			p.List = append(p.List, d)
		}
	}
	for k, n := range counts {
		p.Kinds = append(p.Kinds, kindCount{k, n})
	}
	slices.SortFunc(p.Kinds, func(a, b kindCount) int { return cmp.Compare(a.Kind, b.Kind) })
	slices.Reverse(p.List) // newest first
	p.Total = len(p.List)
	p.List, p.More = p.List[:min(len(p.List), maxTableRows)], max(0, len(p.List)-maxTableRows)
	return "discrepancies", pageData{Title: "Discrepancies", Nav: "discrepancies", Generated: st.Generated, Body: p}, nil
}

func (w *web) agents(r *http.Request, _ *session) (string, pageData, error) {
	st, err := w.h.StatusSummary(0)
	if err != nil {
		return "", pageData{}, err
	}
	return "agents", pageData{Title: "Agents", Nav: "agents", Generated: st.Generated, Body: st}, nil
}
