//! Word expansion against BuildKit's documented lexer behaviour.

use firebuild_dockerfile::{Env, ShellLex};

fn env() -> Env {
    Env::from_key_values([
        "PWD=/home",
        "SHELL=bash",
        "KOREAN=한국어",
        "NULL=",
        "FOO=xxyy",
        "PATHV=/tmp/tmp/bar.txt",
    ])
}

fn ex(word: &str) -> String {
    ShellLex::new('\\')
        .process_word(word, &env())
        .unwrap_or_else(|e| panic!("{word:?}: {e}"))
}

fn ex_err(word: &str) -> String {
    match ShellLex::new('\\').process_word(word, &env()) {
        Ok(v) => panic!("{word:?} expanded to {v:?}, expected an error"),
        Err(e) => e.message,
    }
}

#[test]
fn plain_variables() {
    assert_eq!(ex("$PWD"), "/home");
    assert_eq!(ex("${PWD}"), "/home");
    assert_eq!(ex("a$PWD/b"), "a/home/b");
    assert_eq!(ex("${PWD}x"), "/homex");
    assert_eq!(ex("$PWDx"), "");
    assert_eq!(ex("$UNSET"), "");
    assert_eq!(ex("$KOREAN"), "한국어");
    assert_eq!(ex("$"), "$");
    assert_eq!(ex("a$ b"), "a$ b");
    assert_eq!(ex("$/x"), "$/x");
    // Special parameters and digits are names of their own, never set.
    assert_eq!(ex("$1x"), "x");
    assert_eq!(ex("$@x"), "x");
    assert_eq!(ex("$$"), "");
}

#[test]
fn default_and_alternative() {
    assert_eq!(ex("${UNSET:-def}"), "def");
    assert_eq!(ex("${NULL:-def}"), "def");
    assert_eq!(ex("${PWD:-def}"), "/home");
    assert_eq!(ex("${UNSET-def}"), "def");
    assert_eq!(ex("${NULL-def}"), "");
    assert_eq!(ex("${PWD:+alt}"), "alt");
    assert_eq!(ex("${NULL:+alt}"), "");
    assert_eq!(ex("${NULL+alt}"), "alt");
    assert_eq!(ex("${UNSET+alt}"), "");
    assert_eq!(ex("${UNSET:-$PWD/x}"), "/home/x");
    assert_eq!(ex("${UNSET:-'a b'}"), "a b");
    assert_eq!(ex("${UNSET:-}"), "");
}

#[test]
fn required_values() {
    assert_eq!(ex("${PWD:?msg}"), "/home");
    assert_eq!(ex("${NULL?msg}"), "");
    assert!(ex_err("${NULL:?must be set $SHELL}").contains("NULL: must be set bash"));
    assert!(ex_err("${UNSET?}").contains("UNSET: is not allowed to be unset"));
    assert!(ex_err("${NULL:?}").contains("NULL: is not allowed to be empty"));
    assert!(ex_err("${UNSET:?}").contains("is not allowed to be unset"));
}

#[test]
fn pattern_removal() {
    assert_eq!(ex("${FOO#*x*y}"), "y");
    assert_eq!(ex("${FOO#*}"), "xxyy");
    assert_eq!(ex("${FOO##*x}"), "yy");
    assert_eq!(ex("${FOO#x}"), "xyy");
    assert_eq!(ex("${FOO#}"), "xxyy");
    assert_eq!(ex("${FOO##}"), "xxyy");
    assert_eq!(ex("${FOO%y}"), "xxy");
    assert_eq!(ex("${FOO%%y*}"), "xx");
    assert_eq!(ex("${FOO%y*}"), "xxy");
    assert_eq!(ex("${FOO%}"), "xxyy");
    assert_eq!(ex("${FOO%x}"), "xxyy");
    assert_eq!(ex("${PATHV##*/}"), "bar.txt");
    assert_eq!(ex("${PATHV%/*}"), "/tmp/tmp");
    assert_eq!(ex("${PATHV%%.*}"), "/tmp/tmp/bar");
    assert_eq!(ex("${UNSET#x}"), "");
    let e = Env::from_key_values(["V=???y", "W=xx**", "X=a***yy*", "R=()[]{}^$.*?|\\x"]);
    let lex = ShellLex::new('\\');
    assert_eq!(lex.process_word("${V#?\\?}", &e).unwrap(), "?y");
    assert_eq!(lex.process_word("${W%%\\**}", &e).unwrap(), "xx");
    assert_eq!(lex.process_word("${X%%\\**\\*}", &e).unwrap(), "a");
    assert_eq!(
        lex.process_word("${R#()[]{\\}^$.\\*\\?|\\\\}", &e).unwrap(),
        "x"
    );
    assert!(lex.process_word("${V#\\x}", &e).is_err());
}

#[test]
fn substitution() {
    assert_eq!(ex("${PATHV/tmp/x}"), "/x/tmp/bar.txt");
    assert_eq!(ex("${PATHV//tmp/x}"), "/x/x/bar.txt");
    assert_eq!(ex("${PATHV//\\//\\/}"), "\\/tmp\\/tmp\\/bar.txt");
    assert_eq!(ex("${FOO/x*/z}"), "z");
    assert_eq!(ex("${FOO/?/z}"), "zxyy");
    assert_eq!(ex("${FOO///}"), "xxyy");
    assert_eq!(ex("${UNSET/a/b}"), "");
    let e = Env::from_key_values(["F=/a/foo/b/c.txt", "N=/?/", "R=/", "E="]);
    let lex = ShellLex::new('\\');
    assert_eq!(
        lex.process_word("${F/$N/$R} - ${F//$N/$R}", &e).unwrap(),
        "/foo/b/c.txt - /foo/c.txt"
    );
    assert_eq!(
        lex.process_word("${F/$E/ww}", &e).unwrap(),
        "ww/a/foo/b/c.txt"
    );
    assert!(ex_err("${FOO//ww}").contains("missing '/'"));
}

#[test]
fn syntax_errors() {
    assert!(ex_err("${").contains("missing '}'"));
    assert!(ex_err("${PWD").contains("missing '}'"));
    assert!(ex_err("${}").contains("bad substitution"));
    assert!(ex_err("${:x}").contains("bad substitution"));
    assert!(ex_err("${{x}").contains("bad substitution"));
    assert!(ex_err("${PWD=x}").contains("unsupported modifier (=)"));
    assert!(ex_err("${PWD:x}").contains("unsupported modifier (:x)"));
    assert!(ex_err("${PWD x}").contains("unsupported modifier"));
    assert!(ex_err("'abc").contains("single-quote"));
    assert!(ex_err("\"abc").contains("double-quote"));
    assert!(ex_err("${UNSET:-\"x}").contains("missing '}'"));
}

#[test]
fn quotes_and_escapes() {
    assert_eq!(ex("'$PWD'"), "$PWD");
    assert_eq!(ex("\"$PWD\""), "/home");
    assert_eq!(ex("\"'$PWD'\""), "'/home'");
    assert_eq!(ex("'\"$PWD\"'"), "\"$PWD\"");
    assert_eq!(ex("\\$PWD"), "$PWD");
    assert_eq!(ex("\\\\$PWD"), "\\/home");
    assert_eq!(ex("a\\ b"), "a b");
    assert_eq!(ex("\"a\\\"b\""), "a\"b");
    assert_eq!(ex("\"a\\$b\""), "a$b");
    assert_eq!(ex("\"a\\\\b\""), "a\\b");
    // Other escapes inside double quotes are kept.
    assert_eq!(ex("\"a\\nb\""), "a\\nb");
    assert_eq!(ex("'a\\nb'"), "a\\nb");
    // A trailing escape is dropped.
    assert_eq!(ex("abc\\"), "abc");
    assert_eq!(ex("  a  b  "), "  a  b  ");
    assert_eq!(ex("he'll'o"), "hello");
    assert_eq!(ex("\"\""), "");
}

#[test]
fn backtick_escape() {
    let lex = ShellLex::new('`');
    let e = env();
    assert_eq!(lex.process_word("`$PWD", &e).unwrap(), "$PWD");
    assert_eq!(lex.process_word("c:\\dir", &e).unwrap(), "c:\\dir");
    assert_eq!(lex.process_word("\"a`\"b\"", &e).unwrap(), "a\"b");
}

#[test]
fn words_split_after_expansion() {
    let lex = ShellLex::new('\\');
    let e = Env::from_key_values(["W=a b", "E="]);
    assert_eq!(
        lex.process_words("x $W y", &e).unwrap(),
        vec!["x", "a", "b", "y"]
    );
    assert_eq!(
        lex.process_words("x \"$W\" y", &e).unwrap(),
        vec!["x", "a b", "y"]
    );
    assert_eq!(lex.process_words("'a b' c", &e).unwrap(), vec!["a b", "c"]);
    assert_eq!(lex.process_words("a\\ b", &e).unwrap(), vec!["a b"]);
    assert_eq!(lex.process_words("  ", &e).unwrap(), Vec::<String>::new());
}

#[test]
fn raw_and_skip_modes() {
    let e = Env::from_key_values(["A=1"]);
    let mut lex = ShellLex::new('\\');
    lex.raw_quotes = true;
    assert_eq!(lex.process_word("'x' \"$A\"", &e).unwrap(), "'x' \"1\"");
    let mut lex = ShellLex::new('\\');
    lex.skip_unset_env = true;
    assert_eq!(
        lex.process_word("$A $B ${C} ${D:-x}", &e).unwrap(),
        "1 $B ${C} ${D:-x}"
    );
    let mut lex = ShellLex::new('\\');
    lex.skip_process_quotes = true;
    assert_eq!(lex.process_word("'$A' \"q\"", &e).unwrap(), "'1' \"q\"");
}

#[test]
fn matches_are_reported() {
    let e = Env::from_key_values(["A=1"]);
    let r = ShellLex::new('\\').process("$A ${B:-x}", &e).unwrap();
    assert!(r.matched.contains("A"));
    assert!(r.unmatched.contains("B"));
}

#[test]
fn platform_style_release_names() {
    let e = Env::from_key_values([
        "VERSION=v1.2.3",
        "TARGETOS=linux",
        "TARGETARCH=arm",
        "TARGETVARIANT=v7",
    ]);
    let w =
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
    assert_eq!(
        ShellLex::new('\\').process_word(w, &e).unwrap(),
        "something-v1.2.3.linux-arm-v7.tar.gz"
    );
}
