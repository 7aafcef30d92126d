//! The CLIP tokenizer (lower-case byte-level BPE), identical to transformers' CLIPTokenizer as
//! diffusers calls it: `padding="max_length", max_length=77, truncation=True`.
//!
//! Loads `tokenizer/tokenizer.json` when present; otherwise builds the same pipeline from
//! `vocab.json` + `merges.txt` (what the Stable Cascade snapshots ship): NFC, whitespace runs
//! folded to one space, lower case, the CLIP split pattern, byte-level mapping, BPE with `</w>`
//! word ends. Ids are `<|startoftext|>`, at most 75 tokens, `<|endoftext|>`, then padding.

use std::path::Path;

use crate::{Error, Result};

/// CLIP's context length.
pub const MAX_LENGTH: usize = 77;

/// The split pattern of CLIP's pre-tokenizer (special tokens, contractions, letter runs,
/// single digits, runs of other non-space characters).
const CLIP_PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `MAX_LENGTH` token ids.
    pub input_ids: Vec<u32>,
    /// 1 for BOS, the tokens and the first EOS; 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Whether the prompt was longer than 75 tokens and was cut.
    pub truncated: bool,
}

/// The CLIP tokenizer.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClipTokenizer(bos {}, eos {}, pad {})", self.bos, self.eos, self.pad)
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))
}

impl ClipTokenizer {
    /// Loads the tokenizer folder of a snapshot.
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer> {
        let json = dir.join("tokenizer.json");
        let inner = if json.exists() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| Error::file(&json, format!("invalid tokenizer.json: {e}")))?
        } else {
            let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
            Self::bpe(&read(&vocab_path)?, &read(&merges_path)?, &vocab_path, &merges_path)?
        };
        Self::with_specials(inner, Some(dir))
    }

    /// A tokenizer from the text of `vocab.json` and `merges.txt` (the built-in model embeds its
    /// small vocabulary this way), with CLIP's default special tokens.
    pub fn from_vocab_and_merges(vocab_json: &str, merges_txt: &str) -> Result<ClipTokenizer> {
        let inner = Self::bpe(vocab_json, merges_txt, Path::new("vocab.json"), Path::new("merges.txt"))?;
        Self::with_specials(inner, None)
    }

    /// CLIP's byte-level BPE pipeline over a vocabulary and merge list.
    fn bpe(vocab_text: &str, merges_text: &str, vocab_path: &Path, merges_path: &Path) -> Result<tokenizers::Tokenizer> {
        let vocab: serde_json::Value =
            serde_json::from_str(vocab_text).map_err(|e| Error::file(vocab_path, format!("invalid JSON: {e}")))?;
        if !vocab.is_object() {
            return Err(Error::file(vocab_path, "expected an object of token → id"));
        }
        let merges: Vec<String> =
            merges_text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).map(String::from).collect();
        if let Some(bad) = merges.iter().find(|m| m.split(' ').count() != 2) {
            return Err(Error::file(merges_path, format!("a merge must be two tokens separated by one space, got '{bad}'")));
        }
        let id_of =
            |t: &str| vocab.get(t).and_then(|v| v.as_u64()).ok_or_else(|| Error::file(vocab_path, format!("the vocabulary lacks '{t}'")));
        let (bos, eos) = (id_of("<|startoftext|>")?, id_of("<|endoftext|>")?);
        let spec = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": bos, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": eos, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        spec.to_string()
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::file(vocab_path, format!("cannot build the BPE tokenizer from vocab.json + merges.txt: {e}")))
    }

    /// Looks up BOS, EOS and PAD, as named by the folder's special_tokens_map.json or
    /// tokenizer_config.json when present (CLIP's defaults otherwise).
    fn with_specials(inner: tokenizers::Tokenizer, dir: Option<&Path>) -> Result<ClipTokenizer> {
        let special = |name: &str, default: &str| -> String {
            // The files name a token as a string or as {"content": …}.
            for f in ["special_tokens_map.json", "tokenizer_config.json"] {
                let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join(f)).ok()) else { continue };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    match v.get(name) {
                        Some(serde_json::Value::String(s)) => return s.clone(),
                        Some(o) => {
                            if let Some(s) = o.get("content").and_then(|c| c.as_str()) {
                                return s.to_string();
                            }
                        }
                        None => {}
                    }
                }
            }
            default.to_string()
        };
        let where_ = dir.map_or_else(|| Path::new("tokenizer").to_path_buf(), Path::to_path_buf);
        let id = |tok: String| inner.token_to_id(&tok).ok_or_else(|| Error::file(&where_, format!("the tokenizer has no token '{tok}'")));
        let bos = id(special("bos_token", "<|startoftext|>"))?;
        let eos = id(special("eos_token", "<|endoftext|>"))?;
        let pad = id(special("pad_token", "<|endoftext|>"))?;
        Ok(ClipTokenizer { inner, bos, eos, pad })
    }

    /// The beginning-of-text id.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// The end-of-text id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Tokenizes one prompt to exactly [`MAX_LENGTH`] ids.
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        let enc = self.inner.encode(prompt, false).map_err(|e| Error::Msg(format!("tokenizing '{prompt}': {e}")))?;
        let body = enc.get_ids();
        let keep = body.len().min(MAX_LENGTH - 2);
        let mut input_ids = Vec::with_capacity(MAX_LENGTH);
        input_ids.push(self.bos);
        input_ids.extend_from_slice(&body[..keep]);
        input_ids.push(self.eos);
        let mut attention_mask = vec![1; input_ids.len()];
        input_ids.resize(MAX_LENGTH, self.pad);
        attention_mask.resize(MAX_LENGTH, 0);
        Ok(Tokens { input_ids, attention_mask, truncated: body.len() > keep })
    }
}
