package hub

import (
	"bytes"
	"cmp"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// ExportRow is one record line in an export: the record as amended, with
// its site, agent, pledge and donor, and where it stands. Times are ISO 8601
// (RFC 3339, UTC); Date is the day the thing happened: a training's date, or
// the day a delivery or confirmation was recorded at the site.
type ExportRow struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Site       string `json:"site"`
	SiteName   string `json:"site_name"`
	Region     string `json:"region"`
	Sector     string `json:"sector"`
	Agent      string `json:"agent"`
	Seq        uint64 `json:"seq"`
	At         string `json:"at"` // ISO 8601
	Pledge     string `json:"pledge"`
	Donor      string `json:"donor"`
	Programme  string `json:"programme"`
	Kind       string `json:"kind"`
	Item       string `json:"item"`
	Qty        int64  `json:"qty"`
	Rejected   int64  `json:"qty_rejected"`
	Rejection  string `json:"rejection"`
	Condition  string `json:"condition"`
	Serials    string `json:"serials"` // separated by ";"
	Date       string `json:"date"`    // YYYY-MM-DD
	Attendees  int64  `json:"attendees"`
	Provider   string `json:"provider"`
	ReceivedBy string `json:"received_by"`
	Role       string `json:"role"`
	Waybill    string `json:"waybill"`
	Target     string `json:"target"`
	State      string `json:"state"` // active, voided, correction
	Note       string `json:"note"`
}

// exportColumns are the CSV header and, for HXL, the hashtag row
// (https://hxlstandard.org/standard/dictionary/).
var exportColumns = []struct{ name, hxl string }{
	{"id", "#meta+id"}, {"type", "#activity+type"}, {"site", "#loc+code"}, {"site_name", "#loc+name"},
	{"region", "#adm1+name"}, {"sector", "#sector"}, {"agent", "#meta+agent"}, {"seq", "#meta+seq"},
	{"at", "#date+reported"}, {"pledge", "#activity+code"}, {"donor", "#org+funding"}, {"programme", "#activity+prog"},
	{"kind", "#item+type"}, {"item", "#item+name"}, {"qty", "#item+num"}, {"qty_rejected", "#item+num+rejected"},
	{"rejection", "#status+rejection"}, {"condition", "#status+condition"}, {"serials", "#item+code"},
	{"date", "#date+occurred"}, {"attendees", "#reached"}, {"provider", "#org+impl"},
	{"received_by", "#contact+name"}, {"role", "#contact+role"}, {"waybill", "#meta+waybill"},
	{"target", "#meta+corrects"}, {"state", "#status"}, {"note", "#description"},
}

func (r ExportRow) values() []string {
	return []string{r.ID, r.Type, r.Site, r.SiteName, r.Region, r.Sector, r.Agent, strconv.FormatUint(r.Seq, 10),
		r.At, r.Pledge, r.Donor, r.Programme, r.Kind, r.Item, strconv.FormatInt(r.Qty, 10), strconv.FormatInt(r.Rejected, 10),
		r.Rejection, r.Condition, r.Serials, r.Date, strconv.FormatInt(r.Attendees, 10), r.Provider,
		r.ReceivedBy, r.Role, r.Waybill, r.Target, r.State, r.Note}
}

// Rows returns every record as an export row, in (agent, sequence) order.
func (h *Hub) Rows() ([]ExportRow, error) {
	return h.rows("")
}

// rows returns the export rows of one site, or of all sites if site is
// empty, in (agent, sequence) order.
func (h *Hub) rows(site string) ([]ExportRow, error) {
	rows := []ExportRow{}
	err := h.led.Read(func(txn *memdb.Txn) error {
		sites := map[string]*ledger.Site{}
		return eachRecord(txn, site, func(r *protocol.Record) error {
			row, err := exportRow(txn, r, sites)
			if err != nil {
				return err
			}
			rows = append(rows, row)
			return nil
		})
	})
	// Records come in the order the hub stored them, every agent's
	// interleaved; the export lists each agent's together, in order.
	slices.SortFunc(rows, func(x, y ExportRow) int { return cmp.Or(cmp.Compare(x.Agent, y.Agent), cmp.Compare(x.Seq, y.Seq)) })
	return rows, err
}

// exportRow makes the row of one record; sites caches site lookups.
func exportRow(txn *memdb.Txn, r *protocol.Record, sites map[string]*ledger.Site) (ExportRow, error) {
	row := ExportRow{ID: r.ID, Type: string(r.Type), Site: r.Site, Agent: r.Agent, Seq: r.Seq,
		At: r.At.UTC().Format(time.RFC3339), Target: r.Target, State: "active"}
	eff := *r
	switch r.Type {
	case protocol.TypeAmendment, protocol.TypeVoid:
		row.State = "correction"
	default:
		var voided bool
		var err error
		eff, voided, err = ledger.RecordsOf(txn).Effective(r)
		if err != nil {
			return row, err
		}
		if voided {
			row.State = "voided"
		}
	}
	row.Pledge, row.Item, row.Qty, row.Rejected, row.Rejection = eff.Pledge, eff.Item, eff.Qty, eff.QtyRejected, string(eff.Rejection)
	row.Condition, row.Serials, row.Date, row.Attendees = string(eff.Condition), strings.Join(eff.Serials, ";"), eff.Date, eff.Attendees
	row.Provider, row.ReceivedBy, row.Role, row.Waybill = eff.Provider, eff.ReceivedBy, eff.Role, eff.Waybill
	row.Note = cmpOr(eff.Note, eff.Reason)
	if eff.Type == protocol.TypeTraining {
		row.Item = eff.Course
	}
	if row.Date == "" && !r.At.IsZero() {
		row.Date = r.At.UTC().Format(time.DateOnly)
	}
	s, ok := sites[r.Site]
	if !ok {
		obj, err := txn.First(ledger.TableSites, ledger.IndexID, r.Site)
		if err != nil {
			return row, err
		}
		s, _ = obj.(*ledger.Site)
		sites[r.Site] = s
	}
	if s != nil {
		row.SiteName, row.Region, row.Sector = s.Name, s.Region, s.Sector
	}
	if eff.Pledge != "" {
		if obj, err := txn.First(ledger.TablePledges, ledger.IndexID, eff.Pledge); err != nil {
			return row, err
		} else if p, ok := obj.(*protocol.Pledge); ok {
			row.Donor, row.Programme, row.Kind = p.Donor, p.Programme, string(p.Kind)
			if row.Item == "" {
				row.Item = p.Item // a confirmation confirms the pledged item
			}
		}
	}
	return row, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Export writes every record in format (csv, json or hxl) to path and
// returns the number of rows. The JSON export also carries the aggregated
// status.
func (h *Hub) Export(format, path string) (int, error) {
	rows, err := h.Rows()
	if err != nil {
		return 0, err
	}
	var buf bytes.Buffer
	if err := h.WriteExport(&buf, format, rows); err != nil {
		return 0, err
	}
	return len(rows), atomicfile.Write(path, buf.Bytes(), 0o644)
}

// WriteExport writes rows in format to w.
func (h *Hub) WriteExport(w io.Writer, format string, rows []ExportRow) error {
	switch format {
	case "json":
		st, err := h.Status(StatusFilter{})
		if err != nil {
			return err
		}
		if rows == nil {
			rows = []ExportRow{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"status": st, "records": rows})
	case "csv", "hxl":
		cw := csv.NewWriter(w)
		header := make([]string, len(exportColumns))
		tags := make([]string, len(exportColumns))
		for i, c := range exportColumns {
			header[i], tags[i] = c.name, c.hxl
		}
		cw.Write(header)
		if format == "hxl" {
			cw.Write(tags)
		}
		for _, r := range rows {
			cw.Write(r.values())
		}
		cw.Flush()
		return cw.Error()
	}
	return fmt.Errorf("unknown format %q: use csv, json or hxl", format)
}

// ReplyPrefix starts the name of a bundle the hub writes back for an agent
// to carry by hand, so that importing a USB stick's folder skips them.
const ReplyPrefix = "hub-to-"

// ExportDown writes a bundle for one agent to carry by hand: all its site's
// pledges, the feedback on what it sent, and the acknowledgement point.
func (h *Hub) ExportDown(agentID, path string) error {
	data, _, err := h.downBundle(agentID, down{}, true)
	if err != nil {
		return err
	}
	if data == nil {
		return fmt.Errorf("nothing to send to agent %s yet", agentID)
	}
	return atomicfile.Write(path, data, 0o600)
}
