// Package protocol is fieldsync's format code: the records and pledges
// sites and the hub exchange, the bundles that carry them, the messages of
// the QUIC sync protocol, the enrolment file and the key formats. It reads
// and writes bytes (io.Reader, io.Writer) and nothing else: no files, no
// network, no clock.
//
// docs/protocol.md is the specification, detailed enough for a second
// implementation; this comment summarises it.
//
// # Bundles
//
// A bundle is a standard age file (filippo.io/age), so an operator can open
// one with the reference age tool. Bundles going up are encrypted to the
// hub's hybrid post-quantum recipient (age1pq1…) and carry Records; bundles
// coming down are encrypted to one agent and carry DownItems: pledges,
// feedback, the hub's acknowledgement point, a revocation.
//
// age authenticates nothing about the sender, so the plaintext is signed:
//
//	"fieldsync-bundle/1\n"
//	uint32 big-endian length L, then L bytes of manifest JSON
//	body: a zstd frame of newline-terminated JSON items (manifest.body_size bytes)
//	64-byte Ed25519 signature over
//	    "fieldsync-bundle/1 signature\n" || L || manifest || SHA-256(body)
//
// The Manifest names sender, receiver, site and sequence number, and chains
// each bundle to the one before by PrevHash, the hash of its signed
// plaintext (which, unlike the ciphertext, does not change if the bundle is
// encrypted again). [OpenBundle] reads a bundle as a stream and checks as
// it goes: the size limits (MaxBundleSize, MaxManifestSize, MaxItems,
// MaxItemSize, MaxBodySize), the manifest, the sender (through its verify
// callback, before the body is read) and the signature, before it
// decompresses a single byte of the body, and every item. All JSON is
// canonical: exactly what encoding/json writes, no unknown fields. A bundle
// that fails gets a [*BundleError] whose Reason says how: tampered,
// truncated, not-for-us, bad-signature, unknown-sender, too-large,
// malformed or version.
//
// # Wire protocol
//
// An agent syncs over QUIC with TLS 1.3 (ALPN "fieldsync/1"), both ends
// presenting Ed25519 keys: the agent checks the hub's against the pin of its
// enrolment file; the hub accepts only enrolled, unrevoked agents. One
// bidirectional stream carries frames: a type byte, a uvarint length and a
// payload, JSON for control messages and binary for bundle bytes.
//
//	agent                                      hub
//	Hello{version, agent, site, hwms, …}  →
//	BlobQuery{attachments it may lack}    →
//	                                      ←    HelloOK{hub_hwm_for_agent, partial} | Error
//	                                      ←    BlobNeed{which, from which offset}
//	Chunk{seq, offset, total, final, data} …   (resuming at partial.offset)
//	                                      ←    Ack{seq, state}   (once durable)
//	BlobChunk{sha256, offset, …} …
//	                                      ←    BlobAck{sha256, state}
//	Done                                  →
//	                                      ←    DownBundle{seq, data} …
//	                                      ←    Bye
//
// [ReadMessage] and [WriteMessage] enforce each type's limit and format;
// failures are [*MessageError]s carrying the Error code to answer with.
//
// # Enrolment
//
// `hub enroll` writes an [Enrolment]: the hub's address, key pin, key and
// age recipient, the site, the new agent's id and a one-time secret.
// [ParseEnrolment] reads one, bounded by MaxEnrolmentSize.
//
// # Keys
//
// An Ed25519 key is both an end's TLS key and its bundle signing key.
// [Fingerprint] names a public key ("SHA256:…"); [MarshalSigningKey] and
// [ParseSigningKey] store a private key as PKCS #8 PEM.
package protocol
