//! Dead letters that always fit. A record is dead-lettered with its original
//! bytes, key and headers, plus `vigil.*` headers saying where it came from
//! and why; when that would be larger than the dead-letter topic takes (a
//! 4 MiB record on an input topic that allows it, with a dead-letter topic
//! at the broker's 1 MiB default), it is cut to fit and says so:
//! `vigil.truncated: true` and `vigil.original.size` (payload),
//! `vigil.key.original.size` (key), `vigil.headers.dropped` (the input's
//! headers, when they alone would not fit). A record that cannot be
//! written whole never stops the pipeline.
//!
//! Pure: the producer code in `mod.rs` turns a [`Letter`] into a record.

/// Room for the record's framing in a batch (librdkafka's per-message
/// overhead is under 100 bytes) and the `vigil.*` headers added here.
pub const RECORD_OVERHEAD: usize = 1024;

/// A `vigil.reason` is cut to this many bytes: a reason quotes values, and a
/// value can be as large as the record.
pub const MAX_REASON_BYTES: usize = 1024;

/// When the broker refuses a dead letter as too large even though it was
/// cut to the limit the runner knew (a topic whose `max.message.bytes` could
/// not be read, or changed since), it is sent once more cut to this.
pub const STUB_LIMIT: usize = 4096;

/// Bytes a header takes in a record, counted as librdkafka does (name, value
/// and their length prefixes), rounded up.
fn header_size(name: &str, value: Option<&[u8]>) -> usize {
    name.len() + value.map_or(0, <[u8]>::len) + 16
}

/// The largest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Header set on a dead letter that was cut to fit.
pub const TRUNCATED: &str = "vigil.truncated";
/// Header with the payload's size before it was cut.
pub const ORIGINAL_SIZE: &str = "vigil.original.size";

/// A reason fit for a header.
pub fn reason(text: &str) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text.to_string();
    }
    format!("{}... ({} bytes, cut)", cut_str(text, MAX_REASON_BYTES), text.len())
}

/// The `vigil.*` headers every dead letter carries: the stage that refused
/// the record, why (cut to [`MAX_REASON_BYTES`]), and where it came from
/// (partition and offset when known).
pub fn context(stage: &str, why: &str, topic: &str, source: Option<(i32, i64)>) -> Vec<(String, String)> {
    let mut headers = vec![
        ("vigil.stage".to_string(), stage.to_string()),
        ("vigil.reason".to_string(), reason(why)),
        ("vigil.source.topic".to_string(), topic.to_string()),
    ];
    if let Some((partition, offset)) = source {
        headers.push(("vigil.source.partition".to_string(), partition.to_string()));
        headers.push(("vigil.source.offset".to_string(), offset.to_string()));
    }
    headers
}

/// A dead letter sized to fit: the payload and key (possibly cut), whether
/// the input's headers are kept, and the headers to add.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub keep_input_headers: bool,
    /// `vigil.*` headers, in order.
    pub headers: Vec<(String, String)>,
}

impl Letter<'_> {
    /// Whether anything was cut or dropped.
    pub fn truncated(&self) -> bool {
        self.headers.iter().any(|(k, _)| k == TRUNCATED)
    }
}

/// Size a dead letter for a topic that takes records of up to `limit` bytes
/// (the smaller of the producer's `message.max.bytes` and the topic's
/// `max.message.bytes`).
///
/// `vigil` are the headers every dead letter carries (stage, reason,
/// source); `input_headers` the input record's own.
pub fn fit<'a>(
    limit: usize,
    payload: &'a [u8],
    key: Option<&'a [u8]>,
    input_headers: &[(&str, Option<&[u8]>)],
    vigil: Vec<(String, String)>,
) -> Letter<'a> {
    let vigil_size: usize = vigil.iter().map(|(k, v)| header_size(k, Some(v.as_bytes()))).sum();
    let input_size: usize = input_headers.iter().map(|(k, v)| header_size(k, *v)).sum();
    let key_len = key.map_or(0, <[u8]>::len);
    let mut letter = Letter { payload, key, keep_input_headers: true, headers: vigil };
    if RECORD_OVERHEAD + vigil_size + input_size + key_len + payload.len() <= limit {
        return letter;
    }
    let mut budget = limit.saturating_sub(RECORD_OVERHEAD + vigil_size);
    // Headers and key are context; most of the room goes to the payload.
    if input_size <= budget / 4 {
        budget -= input_size;
    } else {
        letter.keep_input_headers = false;
        letter.headers.push(("vigil.headers.dropped".into(), input_headers.len().to_string()));
    }
    if let Some(k) = key {
        if k.len() > budget / 4 {
            letter.key = Some(&k[..budget / 4]);
            letter.headers.push(("vigil.key.original.size".into(), k.len().to_string()));
        }
        budget -= letter.key.map_or(0, <[u8]>::len);
    }
    if payload.len() > budget {
        letter.payload = &payload[..budget];
    }
    letter.headers.push((TRUNCATED.into(), "true".into()));
    letter.headers.push((ORIGINAL_SIZE.into(), payload.len().to_string()));
    letter
}

/// Whether a produce error is about this one record (too large, invalid),
/// so that the record can be dead-lettered and the pipeline go on; any
/// other error (authorisation, a missing topic, timeouts) is about the topic
/// and would fail every record alike.
pub fn is_record_error(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::InvalidMessage
            | C::BadMessage
            | C::InvalidTimestamp
    )
}

/// Whether a produce error says the record is too large.
pub fn is_size_error(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(code, C::MessageSizeTooLarge | C::InvalidMessageSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vigil() -> Vec<(String, String)> {
        vec![("vigil.stage".into(), "decode".into()), ("vigil.reason".into(), "too big".into())]
    }

    fn wire(l: &Letter<'_>, input: &[(&str, Option<&[u8]>)]) -> usize {
        let h: usize = l.headers.iter().map(|(k, v)| header_size(k, Some(v.as_bytes()))).sum::<usize>()
            + if l.keep_input_headers { input.iter().map(|(k, v)| header_size(k, *v)).sum() } else { 0 };
        l.payload.len() + l.key.map_or(0, <[u8]>::len) + h
    }

    #[test]
    fn a_letter_that_fits_is_kept_whole() {
        let payload = vec![b'x'; 10_000];
        let l = fit(1_000_000, &payload, Some(b"k"), &[("trace", Some(b"abc"))], vigil());
        assert_eq!(l.payload.len(), 10_000);
        assert_eq!(l.key, Some(&b"k"[..]));
        assert!(l.keep_input_headers);
        assert!(!l.truncated());
        assert_eq!(l.headers.len(), 2);
    }

    #[test]
    fn an_oversize_payload_is_cut_to_the_limit_and_says_so() {
        let payload = vec![b'x'; 4 << 20];
        let limit = 1_048_588;
        let l = fit(limit, &payload, Some(b"key-1"), &[("trace", Some(b"abc"))], vigil());
        assert!(l.truncated());
        assert!(l.payload.len() > 1_000_000, "most of the room goes to the payload: {}", l.payload.len());
        assert!(wire(&l, &[("trace", Some(b"abc"))]) + 200 <= limit, "fits with room for framing");
        assert_eq!(l.payload, &payload[..l.payload.len()], "a prefix of the original");
        let original = l.headers.iter().find(|(k, _)| k == ORIGINAL_SIZE).unwrap();
        assert_eq!(original.1, (4 << 20).to_string());
        assert_eq!(l.key, Some(&b"key-1"[..]), "a small key is kept");
        assert!(l.keep_input_headers);
    }

    #[test]
    fn huge_keys_and_headers_are_cut_or_dropped_too() {
        let payload = vec![b'x'; 100];
        let key = vec![b'k'; 3 << 20];
        let big = vec![b'h'; 2 << 20];
        let input = [("a", Some(big.as_slice())), ("b", None)];
        let limit = 1_000_000;
        let l = fit(limit, &payload, Some(&key), &input, vigil());
        assert!(!l.keep_input_headers);
        assert!(l.headers.contains(&("vigil.headers.dropped".into(), "2".into())));
        assert!(l.headers.contains(&("vigil.key.original.size".into(), (3 << 20).to_string())));
        assert!(l.key.unwrap().len() < limit / 3);
        assert_eq!(l.payload.len(), 100, "the payload fits once the key is cut");
        assert!(wire(&l, &input) <= limit);
    }

    #[test]
    fn a_limit_smaller_than_the_overhead_leaves_an_empty_payload_not_a_panic() {
        let payload = vec![b'x'; 10];
        let l = fit(100, &payload, Some(b"key"), &[], vigil());
        assert!(l.truncated());
        assert!(l.payload.is_empty());
        assert_eq!(l.key, Some(&b""[..]));
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let r = reason(&long);
        assert!(r.len() < MAX_REASON_BYTES + 40);
        assert!(r.ends_with("(4000 bytes, cut)"), "{r}");
        assert_eq!(reason("short"), "short");
        assert_eq!(cut_str("aé", 2), "a");
    }
}
