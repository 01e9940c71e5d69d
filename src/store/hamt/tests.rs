//! Tests of the trie layout.
