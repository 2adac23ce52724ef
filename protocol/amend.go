package protocol

// Amend applies the fields an amendment sets to rec: every non-empty field of
// fix replaces rec's; serials and attachments given in fix replace the lists.
// Identity fields (id, seq, agent, site, type, at) and references stay.
func Amend(rec *Record, fix *Record) {
	setStr := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	setStr(&rec.Item, fix.Item)
	setStr(&rec.ReceivedBy, fix.ReceivedBy)
	setStr(&rec.Role, fix.Role)
	setStr(&rec.Waybill, fix.Waybill)
	setStr(&rec.Course, fix.Course)
	setStr(&rec.Date, fix.Date)
	setStr(&rec.Provider, fix.Provider)
	setStr(&rec.Trainer, fix.Trainer)
	setStr(&rec.Note, fix.Note)
	if fix.Qty != 0 {
		rec.Qty = fix.Qty
	}
	if fix.QtyRejected != 0 {
		rec.QtyRejected = fix.QtyRejected
	}
	if fix.Rejection != "" {
		rec.Rejection = fix.Rejection
	}
	if fix.Attendees != 0 {
		rec.Attendees = fix.Attendees
	}
	if fix.Condition != "" {
		rec.Condition = fix.Condition
	}
	if len(fix.Serials) > 0 {
		rec.Serials = fix.Serials
	}
	if len(fix.Attachments) > 0 {
		rec.Attachments = append(append([]Attachment(nil), rec.Attachments...), fix.Attachments...)
	}
}
