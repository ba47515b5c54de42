//! A grammar's mask as a logits processor: tokens the grammar does not
//! allow next get -inf, the sampled token advances the matcher, and the
//! matcher says when the grammar is complete (or failed).

use crate::sampling::{ConstraintStatus, LogitsProcessor};
use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

pub struct GrammarProcessor {
    matcher: Matcher,
    /// This position's mask, once computed (in `prepare`, ahead of the
    /// logits, or in `process`).
    mask: Option<SimpleVob>,
    failed: Option<String>,
}

impl GrammarProcessor {
    pub fn new(matcher: Matcher) -> Self {
        GrammarProcessor {
            matcher,
            mask: None,
            failed: None,
        }
    }

    fn fail(&mut self, why: impl std::fmt::Display) {
        if self.failed.is_none() {
            self.failed = Some(format!("structured output failed: {why}"));
        }
    }
}

impl LogitsProcessor for GrammarProcessor {
    fn prepare(&mut self) {
        if self.mask.is_some() || self.failed.is_some() {
            return;
        }
        match self.matcher.compute_mask_or_eos() {
            Ok(m) if m.num_set() > 0 => self.mask = Some(m),
            Ok(_) => self.fail("the grammar allows no next token"),
            Err(e) => self.fail(e),
        }
    }

    fn process(&mut self, logits: &mut [f32]) {
        self.prepare();
        // Without a mask the sequence ends with the error: nothing it
        // samples now counts.
        if let Some(mask) = &self.mask {
            apply(mask, logits);
        }
    }

    fn accept(&mut self, token: u32) {
        self.mask = None;
        if self.failed.is_none() {
            if let Err(e) = self.matcher.consume_token(token) {
                self.fail(e);
            }
        }
    }

    fn wants_prepare(&self) -> bool {
        self.mask.is_none() && self.failed.is_none()
    }

    fn status(&self) -> ConstraintStatus {
        match &self.failed {
            Some(m) => ConstraintStatus::Failed(m.clone()),
            None if self.matcher.is_error() => ConstraintStatus::Failed(format!(
                "structured output failed: {}",
                self.matcher.get_error().unwrap_or_default()
            )),
            None if self.matcher.is_stopped() => ConstraintStatus::Complete,
            None => ConstraintStatus::Open,
        }
    }
}

/// Sets every logit the mask does not allow to -inf (32 tokens per word;
/// ids past the mask's size are disallowed).
fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX && chunk.len() == 32 {
            continue;
        }
        for (b, v) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let size = mask.len();
    if logits.len() > size {
        logits[size..].fill(f32::NEG_INFINITY);
    }
}
