// Package inbox turns files that a person or another tool drops into the
// agent's inbox folder (DIR/inbox/) into records.
//
// # Record files
//
// A file whose name ends in .json or .csv is a record file; every record in
// it is taken, or none is.
//
// A JSON file holds one object or an array of objects:
//
//	[
//	  {"type": "delivery", "item": "Firewall FG-100F", "qty": 2,
//	   "serial": ["FG100F0001", "FG100F0002"], "condition": "ok",
//	   "received_by": "O. Kovalenko", "attach": ["waybill-0412.pdf"]},
//	  {"type": "training", "course": "Incident response", "date": "2025-03-14",
//	   "attendees": 12, "provider": "CERT-UA"}
//	]
//
// A CSV file (UTF-8, comma-separated; a header row with semicolons and no
// commas, as Excel writes it in Ukrainian and other European locales, makes
// semicolons the separator, and likewise tabs) has a header row naming the fields and one record
// per row. An empty cell is a field left out; rows that are entirely empty are
// skipped. A list (serial, attach) is written in one cell, its items separated
// by ";" or "|":
//
//	type,item,qty,serial,condition,received_by
//	delivery,Switch 24-port,3,SW-1|SW-2|SW-3,ok,O. Kovalenko
//
// The fields are the names of the agent's record flags with "-" written "_".
// Every record has a type and may have a pledge and a note; the other fields
// depend on the type:
//
//	type          delivery, training or confirmation
//	pledge        the pledge fulfilled or confirmed (required for confirmation)
//	note          free text
//	delivery      item, qty (required), serial, condition, received_by, attach
//	training      course, date (YYYY-MM-DD), attendees (required), provider, trainer
//	confirmation  qty, qty_rejected, rejection, serial, condition,
//	              received_by, role, waybill, attach
//
// qty, qty_rejected and attendees are whole numbers (in JSON, numbers without
// quotes); serial and attach are lists (in JSON, a list of strings or one
// string); attach names files in the inbox, as they are named there.
//
// Field names are matched without regard to case, and "-" or a space in them
// is read as "_". A field that does not apply to the record's type, an
// unknown field, a field given twice, a number where text belongs or text
// where a number belongs is an error; so is every check the agent applies to
// a record it makes itself. The first error rejects the whole file, and says
// where: "deliveries.csv line 4: qty: "three" is not a whole number".
//
// # Attachments
//
// Any other file is an attachment. It waits in the inbox until a record file
// names it in attach, and is then taken with that record file. A record file
// whose attachments are not all there yet waits for them up to
// [Options.AttachWait]; an attachment that no record file names within
// [Options.OrphanAfter] is rejected.
//
// # Complete files only
//
// A file is taken only once it has settled: no change reported for
// [Options.Settle] and its size and modification time the same at the end of
// that period as at its start. Files being written under a temporary name are
// not looked at: names starting with "." or "~$", ending in "~", ".tmp",
// ".part", ".partial", ".swp", ".crdownload" or ".download", and the
// Thumbs.db and desktop.ini files that Windows leaves in folders. Folders in
// the inbox are ignored.
//
// # Done and rejected
//
// Taken files move to inbox/done/. A file that cannot be taken moves to
// inbox/rejected/ with NAME.reason beside it: one line saying why. Nothing is
// ever deleted or overwritten; a name already used in done/ or rejected/ gets
// a numbered suffix (deliveries-1.csv). The attachments of a rejected record
// file stay in the inbox, so that a corrected record file can name them.
//
// If the agent stops after a record file was ingested but before it was
// moved, the file is offered again at the next start; the [Ingester] must
// recognise it (the agent keys the records of a file by its content hash).
package inbox
