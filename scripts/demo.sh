#!/usr/bin/env bash
# fieldsync demo: a hub and three site agents on loopback, in a scratch
# folder. Pledges go down, deliveries, trainings and confirmations come up —
# two sites over QUIC, one by "USB stick" — and the hub shows the picture.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/fieldsync-demo.XXXXXX")
bin="$work/bin"
hubpid=""
cleanup() {
	[ -n "$hubpid" ] && kill "$hubpid" 2>/dev/null && wait "$hubpid" 2>/dev/null
	echo
	echo "demo files kept in $work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s#$bin/##; s#$work#\$DEMO#g"; "$@"; }

say "build agent and hub"
CGO_ENABLED=0 go build -o "$bin/" ./cmd/agent ./cmd/hub
hub() { "$bin/hub" --dir "$work/hub" "$@"; }
agent() { local site=$1; shift; "$bin/agent" --dir "$work/$site" "$@"; }

say "the hub in Warsaw: keys, then serve on loopback"
run "$bin/hub" --dir "$work/hub" init
"$bin/hub" --dir "$work/hub" serve --listen 127.0.0.1:0 --http "" 2>"$work/hub.log" &
hubpid=$!
for _ in $(seq 100); do grep -q "serving" "$work/hub.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*sync on \([0-9.:]*\) (udp).*/\1/p' "$work/hub.log")
echo "hub listening on $addr (QUIC)"

say "enrol three sites (one-time enrolment files)"
run "$bin/hub" --dir "$work/hub" enroll --site UA-KV-017 --name "Kyiv substation 17" --sector energy --region Kyiv --addr "$addr" --out "$work/kv017.enrol"
run "$bin/hub" --dir "$work/hub" enroll --site UA-LV-004 --name "Lviv water pumping station 4" --sector water --region Lviv --addr "$addr" --out "$work/lv004.enrol"
run "$bin/hub" --dir "$work/hub" enroll --site UA-DP-011 --name "Dnipro telecom exchange 11" --sector telecom --region Dnipropetrovsk --addr "$addr" --out "$work/dp011.enrol"

say "pledges: what donors committed to each site"
fw=$(hub pledge add --site UA-KV-017 --donor Estonia --programme "Tallinn Mechanism" --kind hardware --item "FortiGate 100F firewall" --qty 4)
tr=$(hub pledge add --site UA-KV-017 --donor Estonia --programme "Tallinn Mechanism" --kind training --item "OT incident response" --qty 12)
sv=$(hub pledge add --site UA-LV-004 --donor Netherlands --programme "Cyber Coalition" --kind hardware --item "Dell PowerEdge R650 server" --qty 2)
li=$(hub pledge add --site UA-LV-004 --donor Netherlands --programme "Cyber Coalition" --kind software --item "EDR licence (1 year)" --qty 50)
sat=$(hub pledge add --site UA-DP-011 --donor Germany --programme "Ukraine Digital Resilience" --kind satcom --item "Starlink terminal" --qty 6)
echo "pledges $fw $tr $sv $li $sat"

say "each site engineer initialises the agent from the enrolment file (offline)"
for s in kv017 lv004 dp011; do run "$bin/agent" --dir "$work/$s" init --enroll "$work/$s.enrol"; done

say "first sync: the agents learn their pledges"
for s in kv017 lv004; do run "$bin/agent" --dir "$work/$s" sync; done
run "$bin/agent" --dir "$work/kv017" pledges

say "Kyiv: firewalls arrive and are confirmed; a training is given"
run "$bin/agent" --dir "$work/kv017" confirm "$fw" --serial FGT100F-A1 --serial FGT100F-A2 --serial FGT100F-A3 --serial FGT100F-A4 --received-by "O. Kovalenko" --role "head of IT" --waybill "WB-2026-1142"
run "$bin/agent" --dir "$work/kv017" record training --course "OT incident response" --date 2026-11-20 --attendees 12 --provider "CERT-EE" --pledge "$tr"

say "Lviv: only one of two servers arrived (short); licences confirmed"
run "$bin/agent" --dir "$work/lv004" record delivery --item "Dell PowerEdge R650 server" --qty 1 --pledge "$sv" --serial SRV-R650-77 --condition ok --received-by "I. Melnyk"
run "$bin/agent" --dir "$work/lv004" confirm "$sv" --qty 1 --rejected 1 --rejection short --received-by "I. Melnyk" --role "chief engineer" --note "second server missing from the pallet"
run "$bin/agent" --dir "$work/lv004" confirm "$li" --received-by "I. Melnyk" --role "chief engineer"

say "sync Kyiv and Lviv over QUIC"
for s in kv017 lv004; do run "$bin/agent" --dir "$work/$s" sync; done

say "Dnipro has no link: the engineer records offline and carries a USB stick"
mkdir -p "$work/usb1" "$work/usb2"
run "$bin/agent" --dir "$work/dp011" record delivery --item "Starlink terminal" --qty 6 --pledge "$sat" --received-by "P. Shevchenko" --note "one dish cracked in transit"
run "$bin/agent" --dir "$work/dp011" export --to "$work/usb1"
run "$bin/hub" --dir "$work/hub" import "$work/usb1" --reply "$work/usb1"
run "$bin/agent" --dir "$work/dp011" import "$work"/usb1/hub-to-*.age
say "the stick brought Dnipro its pledges: confirm, one terminal rejected as damaged"
run "$bin/agent" --dir "$work/dp011" confirm "$sat" --qty 5 --rejected 1 --rejection damaged --received-by "P. Shevchenko" --role "shift engineer" --waybill "DHL-7731-UA"
run "$bin/agent" --dir "$work/dp011" export --to "$work/usb2"
run "$bin/hub" --dir "$work/hub" import "$work/usb2" --reply "$work/usb2"
run "$bin/agent" --dir "$work/dp011" import "$work"/usb2/hub-to-*.age
run "$bin/agent" --dir "$work/dp011" list

say "the hub's aggregated picture"
run "$bin/hub" --dir "$work/hub" status
echo
echo "To browse the same picture in the dashboard:"
echo "  $bin/hub --dir $work/hub serve --listen 127.0.0.1:0 --http 127.0.0.1:8080"
echo "  then open http://127.0.0.1:8080/ with the token in $work/hub/operator.token"
