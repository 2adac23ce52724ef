package hub

import (
	"bytes"
	"cmp"
	"fmt"
	"html/template"
	"net/url"
	"slices"
	"time"
)

// The dashboard's charts are inline SVG drawn on the server: no script, no
// image requests, and they print. The geometry is computed here in absolute
// coordinates; the markup comes from html/template, which escapes every
// label.

// Chart geometry, in SVG user units; the SVG scales to its container. Each
// row is a line of text (the label on the left, the figures on the right)
// over a bar the full width of the chart, which keeps labels readable on a
// phone.
const (
	chartWidth   = 480
	chartBarX    = 0
	chartBarW    = chartWidth
	chartRowH    = 46
	chartBarH    = 14
	chartTop     = 28 // room for the legend
	maxChartRows = 30 // more rows than this are left to the tables
	// freshnessCap is the longest time the freshness chart draws to scale.
	freshnessCap = 14 * 24 * time.Hour
)

// Colours of the charts, shared with the pages' legends.
const (
	colourPledged   = "#dde3ea"
	colourReceived  = "#8dbbe8"
	colourConfirmed = "#1f6f43"
	colourOver      = "#7b3fa0"
	colourFresh     = "#2e7d32" // synced within a day
	colourStale     = "#d09000" // synced within SilentAfter
	colourSilent    = "#c62828" // silent
	colourNever     = "#8a8f98" // never synced
)

type svgRect struct {
	X, Y, W, H float64
	Fill       string
}

type svgText struct {
	X, Y   float64
	Size   int
	Fill   string
	Anchor string
	Text   string
}

type svgRow struct {
	Title  string    // tooltip for the row
	Link   string    // where the label leads, if anywhere
	Labels []svgText // inside the link
	Texts  []svgText
	Rects  []svgRect
}

type svgLine struct {
	X1, Y1, X2, Y2 float64
	Stroke         string
}

type svgChart struct {
	Title  string
	Width  int
	Height float64
	Legend []svgRow
	Rows   []svgRow
	Lines  []svgLine
	Texts  []svgText
}

var chartTmpl = template.Must(template.New("chart").Funcs(template.FuncMap{
	"f": func(v float64) string { return fmt.Sprintf("%.1f", v) },
}).Parse(`{{define "texts"}}{{range .}}<text x="{{f .X}}" y="{{f .Y}}" font-size="{{.Size}}"{{if .Fill}} fill="{{.Fill}}"{{end}}{{if .Anchor}} text-anchor="{{.Anchor}}"{{end}}>{{.Text}}</text>{{end}}{{end -}}
{{define "rects"}}{{range .}}<rect x="{{f .X}}" y="{{f .Y}}" width="{{f .W}}" height="{{f .H}}" fill="{{.Fill}}"/>{{end}}{{end -}}
<svg class="chart" viewBox="0 0 {{.Width}} {{f .Height}}" role="img" aria-label="{{.Title}}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">
<title>{{.Title}}</title>
{{range .Legend}}{{template "rects" .Rects}}{{template "texts" .Texts}}{{end}}
{{range .Rows}}<g>{{if .Title}}<title>{{.Title}}</title>{{end}}{{template "rects" .Rects}}{{if .Link}}<a href="{{.Link}}">{{template "texts" .Labels}}</a>{{else}}{{template "texts" .Labels}}{{end}}{{template "texts" .Texts}}</g>
{{end}}{{range .Lines}}<line x1="{{f .X1}}" y1="{{f .Y1}}" x2="{{f .X2}}" y2="{{f .Y2}}" stroke="{{.Stroke}}" stroke-dasharray="4 3"/>{{end}}
{{template "texts" .Texts}}</svg>`))

// render draws c as inline SVG.
func (c svgChart) render() template.HTML {
	var buf bytes.Buffer
	if err := chartTmpl.Execute(&buf, c); err != nil {
		// The template and its data are ours: a failure is a bug.
		panic(fmt.Sprintf("chart %q: %v", c.Title, err))
	}
	return template.HTML(buf.String())
}

// legend lays out coloured keys left to right at the top of a chart.
func legend(keys ...[2]string) []svgRow {
	var out []svgRow
	x := float64(chartBarX)
	for _, k := range keys {
		out = append(out, svgRow{
			Rects: []svgRect{{X: x, Y: 4, W: 12, H: 12, Fill: k[0]}},
			Texts: []svgText{{X: x + 16, Y: 14, Size: 12, Text: k[1]}},
		})
		x += 16 + 6.5*float64(len([]rune(k[1]))) + 14
	}
	return out
}

// clipText shortens s to n runes for a label; the full text is in the row's
// tooltip.
func clipText(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// donorChart draws, for each donor and programme, what was received and
// confirmed against what was pledged: one bar per programme, the pledge its
// full length, confirmed in the lower half of what was received.
func donorChart(donors []DonorStatus) template.HTML {
	c := svgChart{Title: "Delivery progress by donor and programme", Width: chartWidth}
	c.Legend = legend([2]string{colourPledged, "pledged"}, [2]string{colourReceived, "received"},
		[2]string{colourConfirmed, "confirmed"}, [2]string{colourOver, "over pledge"})
	shown := donors
	if len(shown) > maxChartRows {
		// The largest programmes; the table lists them all.
		shown = slices.Clone(donors)
		slices.SortStableFunc(shown, func(a, b DonorStatus) int { return cmp.Compare(b.Pledged, a.Pledged) })
		shown = shown[:maxChartRows]
	}
	y := float64(chartTop)
	for _, d := range shown {
		label := d.Donor
		if d.Programme != "" {
			label += " · " + d.Programme
		}
		row := svgRow{
			Title:  fmt.Sprintf("%s: %d pledged, %d received, %d confirmed, %d outstanding", label, d.Pledged, d.Received, d.Confirmed, d.Outstanding),
			Link:   "/donors?donor=" + url.QueryEscape(d.Donor),
			Labels: []svgText{{X: 0, Y: y + 14, Size: 14, Text: clipText(label, 34)}},
			Texts: []svgText{{X: chartWidth, Y: y + 14, Size: 13, Fill: "#333", Anchor: "end",
				Text: fmt.Sprintf("%d/%d received · %d confirmed", d.Received, d.Pledged, d.Confirmed)}},
		}
		barY := y + 21
		row.Rects = append(row.Rects, svgRect{X: chartBarX, Y: barY, W: chartBarW, H: chartBarH, Fill: colourPledged})
		if d.Pledged > 0 {
			scale := float64(chartBarW) / float64(d.Pledged)
			rec := min(float64(d.Received)*scale, chartBarW)
			conf := min(float64(d.Confirmed)*scale, chartBarW)
			row.Rects = append(row.Rects,
				svgRect{X: chartBarX, Y: barY, W: rec, H: chartBarH, Fill: colourReceived},
				svgRect{X: chartBarX, Y: barY + chartBarH/2, W: conf, H: chartBarH / 2, Fill: colourConfirmed})
			if d.Received > d.Pledged || d.Confirmed > d.Pledged {
				row.Rects = append(row.Rects, svgRect{X: chartBarX + chartBarW - 5, Y: barY - 2, W: 5, H: chartBarH + 4, Fill: colourOver})
			}
		}
		c.Rows = append(c.Rows, row)
		y += chartRowH
	}
	if len(donors) == 0 {
		c.Texts = append(c.Texts, svgText{X: 0, Y: y + 16, Size: 13, Fill: "#555", Text: "No pledges yet."})
		y += chartRowH / 2
	} else if len(shown) < len(donors) {
		c.Texts = append(c.Texts, svgText{X: 0, Y: y + 12, Size: 12, Fill: "#555",
			Text: fmt.Sprintf("The %d largest of %d programmes; the table lists all.", len(shown), len(donors))})
		y += chartRowH / 2
	}
	c.Height = y
	return c.render()
}

// freshnessColour is the colour of a sync age; never is for a site that
// never synced.
func freshnessColour(age time.Duration, never bool) string {
	switch {
	case never:
		return colourNever
	case age <= 24*time.Hour:
		return colourFresh
	case age <= SilentAfter:
		return colourStale
	}
	return colourSilent
}

// freshnessChart draws the hours since each site last synced, the stalest
// first, coloured by age, with a line at SilentAfter.
func freshnessChart(sites []SiteStatus, now time.Time) template.HTML {
	c := svgChart{Title: "Sync freshness by site: time since last sync", Width: chartWidth}
	c.Legend = legend([2]string{colourFresh, "≤ 1 day"}, [2]string{colourStale, fmt.Sprintf("≤ %d days", int(SilentAfter.Hours()/24))},
		[2]string{colourSilent, "silent"}, [2]string{colourNever, "never synced"})
	type entry struct {
		s     SiteStatus
		age   time.Duration
		never bool
	}
	var es []entry
	var maxAge time.Duration
	for _, s := range sites {
		e := entry{s: s, never: s.LastSync.IsZero()}
		if !e.never {
			e.age = max(0, now.Sub(s.LastSync))
			maxAge = max(maxAge, e.age)
		}
		es = append(es, e)
	}
	slices.SortStableFunc(es, func(a, b entry) int {
		if a.never != b.never {
			if a.never {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.age, a.age)
	})
	hidden := 0
	if len(es) > maxChartRows {
		hidden = len(es) - maxChartRows
		es = es[:maxChartRows]
	}
	// The scale runs to the stalest site, at least past the silent line and
	// at most to freshnessCap; older bars run off the end.
	scaleMax := min(max(maxAge, SilentAfter+24*time.Hour), freshnessCap)
	scale := float64(chartBarW) / scaleMax.Hours()
	y := float64(chartTop)
	for _, e := range es {
		label := e.s.ID
		if e.s.Name != "" {
			label = e.s.Name + " · " + e.s.ID
		}
		colour := freshnessColour(e.age, e.never)
		value := "never synced"
		w, fill := float64(chartBarW), colourPledged
		if !e.never {
			value = Ago(e.s.LastSync, now)
			w, fill = max(3, min(e.age.Hours()*scale, chartBarW)), colour
		}
		c.Rows = append(c.Rows, svgRow{
			Title:  fmt.Sprintf("%s: last sync %s; agent %s", label, value, e.s.AgentState),
			Link:   "/sites/" + url.PathEscape(e.s.ID),
			Labels: []svgText{{X: 0, Y: y + 14, Size: 14, Text: clipText(label, 40)}},
			Texts:  []svgText{{X: chartWidth, Y: y + 14, Size: 13, Fill: colour, Anchor: "end", Text: value}},
			Rects:  []svgRect{{X: chartBarX, Y: y + 21, W: w, H: chartBarH, Fill: fill}},
		})
		y += chartRowH
	}
	if len(es) == 0 {
		c.Texts = append(c.Texts, svgText{X: 0, Y: y + 16, Size: 13, Fill: "#555", Text: "No sites yet."})
		y += chartRowH / 2
	} else {
		x := chartBarX + SilentAfter.Hours()*scale
		c.Lines = append(c.Lines, svgLine{X1: x, Y1: chartTop, X2: x, Y2: y, Stroke: colourSilent})
		c.Texts = append(c.Texts, svgText{X: x, Y: y + 12, Size: 12, Fill: colourSilent, Anchor: "middle",
			Text: fmt.Sprintf("silent after %d days", int(SilentAfter.Hours()/24))})
		y += 18
		if hidden > 0 {
			c.Texts = append(c.Texts, svgText{X: 0, Y: y + 12, Size: 12, Fill: "#555",
				Text: fmt.Sprintf("The %d stalest of %d sites; the table lists all.", len(es), len(es)+hidden)})
			y += chartRowH / 2
		}
	}
	c.Height = y
	return c.render()
}

// Ago says how long ago t was, in words for people: "just now", "5 min ago",
// "3 days ago", "never".
func Ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}
