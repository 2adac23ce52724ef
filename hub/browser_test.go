package hub

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium returns the path of a Chromium to drive, or "".
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestBrowserDashboard drives a real headless Chromium through the
// dashboard as an operator would: it opens the overview, is sent to the
// login form, types the operator token, and checks that the overview shows
// the sites and a discrepancy, on a laptop and on a phone. It runs when
// Chromium is on PATH (Debian's chromium package) or FIELDSYNC_BROWSER=1,
// which makes a missing Chromium a failure. With FIELDSYNC_SCREENSHOT=1 it
// also keeps the laptop screenshot as docs/dashboard.png.
func TestBrowserDashboard(t *testing.T) {
	exe := chromium()
	switch {
	case exe == "" && os.Getenv("FIELDSYNC_BROWSER") == "1":
		t.Fatal("FIELDSYNC_BROWSER=1 but no chromium on PATH: apt-get install chromium")
	case exe == "":
		t.Skip("no chromium on PATH; install Debian's chromium package or set FIELDSYNC_BROWSER=1")
	case testing.Short():
		t.Skip("a real browser is slow; skipped with -short")
	}

	th := seedDemo(t)
	srv := httptest.NewServer(th.Handler()) // loopback
	defer srv.Close()

	// The whole browser lives within this deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // root in CI containers
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1600),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	// Unauthenticated: the dashboard sends the browser to the login form.
	err := chromedp.Do(bctx,
		chromedp.EmulateViewport(1280, 1600),
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	if err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	loc, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil || !strings.Contains(loc, "/login?next=") {
		t.Fatalf("without a session the browser is at %q (%v), want the login form", loc, err)
	}
	before, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	assertNoData(t, "login page", before)

	// Log in with the token.
	err = chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("token"), th.Token()),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("overview")),
	)
	if err != nil {
		t.Fatalf("log in: %v", err)
	}
	text, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("main")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Kyiv substation 17", "Lviv water pumping station 4", // the sites
		"Estonia", "Netherlands", // the donors
		`1 × "Dell PowerEdge R650 server" arrived damaged`, // a discrepancy
		"1 rejected at confirmation: short",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the overview does not show %q:\n%s", want, text)
		}
	}
	charts, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("svg.chart rect").length`))
	if err != nil || charts < 6 {
		t.Errorf("the overview's charts have %d bars (%v), want some", charts, err)
	}
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))
	if os.Getenv("FIELDSYNC_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "docs", "dashboard.png"), shot, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A phone: the page fits the screen's width; wide tables scroll inside
	// their own box.
	err = chromedp.Do(bctx,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Navigate(srv.URL+"/sites/UA-LV-004"),
		chromedp.WaitVisible(chromedp.CSS("main h1")),
	)
	if err != nil {
		t.Fatalf("site page on a phone: %v", err)
	}
	overflow, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		t.Error("on a 390 px wide phone the site page is wider than the screen")
	}
	phone, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path = filepath.Join(t.TempDir(), "phone.png")
	if err := os.WriteFile(path, phone, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("phone screenshot: %s", path)
}
