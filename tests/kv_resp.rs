//! Unit tests of the `kv` guest workload's protocol and store (`guest/src/resp.rs`), compiled
//! here on the host: the guest crate itself is a freestanding binary that `cargo test` cannot
//! run, but the module depends on `core` only.

#![allow(clippy::unwrap_used)]

#[path = "../guest/src/resp.rs"]
#[allow(dead_code)]
mod resp;

use resp::{KEY_MAX, MAX_KEYS, Outcome, Store, VALUE_MAX, process};

/// A zeroed store on the heap (4 MiB would overflow a test thread's stack); all-zero is the
/// empty store.
fn store() -> Box<Store> {
    let layout = std::alloc::Layout::new::<Store>();
    // SAFETY: the layout is Store's; all-zero bytes are a valid, empty Store (metadata zero,
    // length zero, byte arrays).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<Store>();
        assert!(!p.is_null());
        Box::from_raw(p)
    }
}

/// Runs `input` through the server with a roomy output buffer; returns the replies and the
/// outcome.
fn run(s: &mut Store, input: &[u8]) -> (String, Outcome) {
    let mut out = vec![0u8; 16 * 1024];
    let o = process(s, input, &mut out);
    (String::from_utf8_lossy(&out[..o.written]).into_owned(), o)
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

fn one(s: &mut Store, args: &[&str]) -> String {
    let input = cmd(args);
    let (r, o) = run(s, &input);
    assert_eq!(o.consumed, input.len(), "{args:?}");
    assert_eq!(o.commands, 1);
    r
}

#[test]
fn ping_echo_and_inline_commands() {
    let mut s = store();
    assert_eq!(one(&mut s, &["PING"]), "+PONG\r\n");
    assert_eq!(one(&mut s, &["ping", "hi"]), "$2\r\nhi\r\n");
    assert_eq!(
        one(&mut s, &["ECHO", "hello world"]),
        "$11\r\nhello world\r\n"
    );
    let (r, o) = run(&mut s, b"PING\r\nset k  v\nget k\r\n\r\n");
    assert_eq!(r, "+PONG\r\n+OK\r\n$1\r\nv\r\n");
    assert_eq!(o.commands, 3);
    assert_eq!(o.consumed, 24);
}

#[test]
fn set_get_del_exists_strlen_append() {
    let mut s = store();
    assert_eq!(one(&mut s, &["GET", "k"]), "$-1\r\n");
    assert_eq!(one(&mut s, &["SET", "k", "abc"]), "+OK\r\n");
    assert_eq!(one(&mut s, &["GET", "k"]), "$3\r\nabc\r\n");
    assert_eq!(one(&mut s, &["SET", "k", ""]), "+OK\r\n");
    assert_eq!(one(&mut s, &["GET", "k"]), "$0\r\n\r\n");
    assert_eq!(one(&mut s, &["APPEND", "k", "xy"]), ":2\r\n");
    assert_eq!(one(&mut s, &["APPEND", "k", "z"]), ":3\r\n");
    assert_eq!(one(&mut s, &["APPEND", "new", "q"]), ":1\r\n");
    assert_eq!(one(&mut s, &["GET", "k"]), "$3\r\nxyz\r\n");
    assert_eq!(one(&mut s, &["STRLEN", "k"]), ":3\r\n");
    assert_eq!(one(&mut s, &["STRLEN", "nope"]), ":0\r\n");
    assert_eq!(one(&mut s, &["EXISTS", "k", "new", "nope", "k"]), ":3\r\n");
    assert_eq!(one(&mut s, &["DBSIZE"]), ":2\r\n");
    assert_eq!(one(&mut s, &["DEL", "k", "nope"]), ":1\r\n");
    assert_eq!(one(&mut s, &["GET", "k"]), "$-1\r\n");
    assert_eq!(one(&mut s, &["MSET", "a", "1", "b", "2"]), "+OK\r\n");
    assert_eq!(
        one(&mut s, &["MGET", "a", "x", "b"]),
        "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
    );
    assert_eq!(one(&mut s, &["FLUSHALL"]), "+OK\r\n");
    assert_eq!(one(&mut s, &["DBSIZE"]), ":0\r\n");
    assert_eq!(one(&mut s, &["CONFIG", "GET", "save"]), "*0\r\n");
    assert_eq!(
        one(&mut s, &["CLIENT", "SETINFO", "lib-name", "x"]),
        "+OK\r\n"
    );
}

#[test]
fn counters_count_and_refuse_non_integers_and_overflow() {
    let mut s = store();
    for i in 1..=100 {
        assert_eq!(one(&mut s, &["INCR", "c"]), format!(":{i}\r\n"));
    }
    assert_eq!(one(&mut s, &["INCRBY", "c", "-150"]), ":-50\r\n");
    assert_eq!(one(&mut s, &["DECR", "c"]), ":-51\r\n");
    assert_eq!(one(&mut s, &["DECRBY", "c", "9"]), ":-60\r\n");
    assert_eq!(one(&mut s, &["GET", "c"]), "$3\r\n-60\r\n");
    let not_int = "-ERR value is not an integer or out of range\r\n";
    assert_eq!(one(&mut s, &["INCRBY", "c", "x"]), not_int);
    assert_eq!(one(&mut s, &["INCRBY", "c", "01"]), not_int);
    assert_eq!(one(&mut s, &["SET", "t", "abc"]), "+OK\r\n");
    assert_eq!(one(&mut s, &["INCR", "t"]), not_int);
    assert_eq!(one(&mut s, &["SET", "m", "9223372036854775807"]), "+OK\r\n");
    let overflow = "-ERR increment or decrement would overflow\r\n";
    assert_eq!(one(&mut s, &["INCR", "m"]), overflow);
    assert_eq!(
        one(&mut s, &["DECRBY", "z", "-9223372036854775808"]),
        overflow
    );
    assert_eq!(
        one(&mut s, &["INCRBY", "z", "-9223372036854775808"]),
        ":-9223372036854775808\r\n"
    );
}

#[test]
fn errors_read_like_redis() {
    let mut s = store();
    assert_eq!(
        one(&mut s, &["FOO", "a", "b"]),
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
    );
    assert_eq!(
        one(&mut s, &["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        one(&mut s, &["get", "a", "b"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        one(&mut s, &["MSET", "a", "1", "b"]),
        "-ERR wrong number of arguments for 'mset' command\r\n"
    );
    let long_key = "k".repeat(KEY_MAX + 1);
    assert!(one(&mut s, &["SET", &long_key, "v"]).starts_with("-ERR key or value too long"));
    let long_value = "v".repeat(VALUE_MAX + 1);
    assert!(one(&mut s, &["SET", "k", &long_value]).starts_with("-ERR key or value too long"));
    let max_value = "v".repeat(VALUE_MAX);
    assert_eq!(one(&mut s, &["SET", "k", &max_value]), "+OK\r\n");
    assert!(one(&mut s, &["APPEND", "k", "x"]).starts_with("-ERR key or value too long"));
}

#[test]
fn the_longest_error_reply_fits_the_room_reserved_for_it() {
    let mut s = store();
    let long = "a".repeat(100);
    let req = cmd(&["X".repeat(100).as_str(), &long, &long, &long, &long, &long]);
    // The smallest output buffer that still takes a command at all.
    let mut out = [0u8; 320];
    let o = process(&mut s, &req, &mut out);
    assert_eq!(o.consumed, req.len());
    let reply = std::str::from_utf8(&out[..o.written]).unwrap();
    assert!(reply.starts_with("-ERR unknown command 'XXXX"), "{reply}");
    assert!(
        reply.ends_with(" \r\n") && reply.matches("\r\n").count() == 1,
        "{reply}"
    );
}

#[test]
fn protocol_errors_reply_and_close() {
    let mut s = store();
    for bad in [&b"*x\r\n"[..], b"*1\r\n+PING\r\n", b"*1\r\n$4\r\nPINGxx"] {
        let (r, o) = run(&mut s, bad);
        assert!(r.starts_with("-ERR Protocol error"), "{bad:?}: {r}");
        assert!(o.close);
        assert_eq!(o.consumed, bad.len());
    }
    let (r, o) = run(&mut s, &cmd(&["QUIT"]));
    assert_eq!(r, "+OK\r\n");
    assert!(o.close && !o.shutdown);
    // SHUTDOWN stops the server; what follows it on the connection is not run.
    let mut input = cmd(&["SHUTDOWN"]);
    input.extend(cmd(&["SET", "after", "1"]));
    let (r, o) = run(&mut s, &input);
    assert_eq!(r, "+OK\r\n");
    assert!(o.close && o.shutdown);
    assert_eq!(one(&mut s, &["EXISTS", "after"]), ":0\r\n");
}

#[test]
fn partial_requests_wait_for_the_rest_and_pipelines_run_in_order() {
    let mut s = store();
    let mut input = Vec::new();
    for i in 0..50 {
        input.extend(cmd(&["INCR", "p"]));
        if i % 7 == 0 {
            input.extend(b"PING\r\n");
        }
    }
    // Fed in every possible split: the first part's whole commands run, the rest waits.
    let whole = input.clone();
    for cut in [1, 5, 17, 100, whole.len() - 1] {
        let mut s = store();
        let (r1, o1) = run(&mut s, &whole[..cut]);
        let (r2, o2) = run(&mut s, &whole[o1.consumed..]);
        assert_eq!(o1.consumed + o2.consumed, whole.len(), "cut {cut}");
        let mut expected = String::new();
        for i in 0..50 {
            expected += &format!(":{}\r\n", i + 1);
            if i % 7 == 0 {
                expected += "+PONG\r\n";
            }
        }
        assert_eq!(r1 + &r2, expected, "cut {cut}");
    }
    let (_, o) = run(&mut s, b"*2\r\n$3\r\nGET\r\n$1\r\n");
    assert_eq!((o.consumed, o.commands), (0, 0));
}

#[test]
fn replies_stop_when_the_output_is_full_and_resume() {
    let mut s = store();
    let input: Vec<u8> = (0..20).flat_map(|_| cmd(&["INCR", "c"])).collect();
    // Room for a few replies only (each command needs room for its longest possible reply).
    let mut out = [0u8; 330];
    let o = process(&mut s, &input, &mut out);
    assert!(o.commands > 0 && o.commands < 20, "{o:?}");
    let o2 = process(&mut s, &input[o.consumed..], &mut [0u8; 4096]);
    assert_eq!(o.commands + o2.commands, 20);
    assert_eq!(one(&mut s, &["GET", "c"]), "$2\r\n20\r\n");
    // A reply that could never fit is refused instead of waiting forever.
    let big = "v".repeat(VALUE_MAX);
    for k in ["a", "b", "c"] {
        one(&mut s, &["SET", k, &big]);
    }
    let mut small = [0u8; 2048];
    let req = cmd(&["MGET", "a", "b", "c"]);
    let o = process(&mut s, &req, &mut small);
    assert_eq!(o.consumed, req.len());
    assert!(small[..o.written].starts_with(b"-ERR reply too large"));
}

#[test]
fn the_store_fills_up_with_oom_and_deletes_keep_every_key_reachable() {
    let mut s = store();
    for i in 0..MAX_KEYS {
        assert_eq!(one(&mut s, &["SET", &format!("key:{i}"), "x"]), "+OK\r\n");
    }
    assert!(one(&mut s, &["SET", "one-more", "x"]).starts_with("-OOM"));
    assert!(one(&mut s, &["MSET", "key:0", "y", "one-more", "x"]).starts_with("-OOM"));
    assert_eq!(one(&mut s, &["SET", "key:5", "overwrite"]), "+OK\r\n");
    // Delete every third key; the rest must still be found (backward-shift deletion).
    for i in (0..MAX_KEYS).step_by(3) {
        assert_eq!(one(&mut s, &["DEL", &format!("key:{i}")]), ":1\r\n");
    }
    for i in 0..MAX_KEYS {
        let expected = match i {
            _ if i % 3 == 0 => "$-1\r\n".to_string(),
            5 => "$9\r\noverwrite\r\n".to_string(),
            _ => "$1\r\nx\r\n".to_string(),
        };
        assert_eq!(one(&mut s, &["GET", &format!("key:{i}")]), expected, "{i}");
    }
    assert_eq!(
        one(&mut s, &["DBSIZE"]),
        format!(":{}\r\n", MAX_KEYS - MAX_KEYS.div_ceil(3))
    );
}
