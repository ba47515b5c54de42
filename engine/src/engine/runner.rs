//! The model runner: everything device-side of a step. It turns the
//! scheduler's plan into the step's inputs (token ids, positions, block
//! tables, slot mapping, the rows whose logits are needed, per-row adapter
//! slots), runs the forward pass over the KV cache it owns, and samples
//! with each sequence's sampler (which it also owns: sampling state lives
//! with the rows it samples, vLLM v1's input batch). It makes no
//! scheduling decision: what runs is the plan's business.

use super::scheduler::{Schedule, SeqId, SeqState};
use crate::error::{EngineError, Result};
use crate::sampling::{ConstraintStatus, Sampled, SequenceSampler};
use llm_serve_models::{KvCache, LogitsWanted, LoraAdapter, Model, SeqInput, StepInputs};
use std::collections::HashMap;
use std::sync::Arc;

/// What one step produced: a sampled token for each sequence that reached
/// the end of its known tokens, in plan order.
#[derive(Debug, Default)]
pub struct RunnerOutput {
    pub sampled: Vec<(SeqId, Sampled)>,
    /// Sequences whose constraint (grammar) completed or failed with the
    /// token they sampled this step.
    pub constraints: Vec<(SeqId, ConstraintStatus)>,
}

/// One step's inputs and which sequence each logits row belongs to.
#[derive(Debug)]
pub struct PreparedStep {
    pub inputs: StepInputs,
    /// `logits_rows[i]` is sampled for `row_seqs[i]`.
    pub row_seqs: Vec<SeqId>,
    /// The step's adapters: a sequence's `adapter_slot` indexes this.
    pub adapters: Vec<Arc<LoraAdapter>>,
}

/// Flattens a plan into the step's inputs: a pure function of the plan,
/// the sequences' tokens and block tables, and which adapter each runs
/// with (no model, no device). Each distinct adapter gets one slot.
pub fn prepare_step<'a>(
    plan: &Schedule,
    block_size: usize,
    seq: impl Fn(SeqId) -> Option<&'a SeqState>,
    adapter: impl Fn(SeqId) -> Option<Arc<LoraAdapter>>,
) -> Result<PreparedStep> {
    let mut seqs = Vec::with_capacity(plan.seqs.len());
    let mut row_seqs = Vec::new();
    let mut adapters: Vec<Arc<LoraAdapter>> = Vec::new();
    for s in &plan.seqs {
        let slot = adapter(s.id).map(|a| {
            adapters
                .iter()
                .position(|b| Arc::ptr_eq(b, &a))
                .unwrap_or_else(|| {
                    adapters.push(a);
                    adapters.len() - 1
                })
        });
        let slot = slot
            .map(u16::try_from)
            .transpose()
            .map_err(|_| EngineError::Internal("more than 65536 adapters in one step".into()))?;
        let q = seq(s.id).ok_or_else(|| {
            EngineError::Internal(format!("sequence {} is planned but unknown", s.id))
        })?;
        let tokens = q.tokens.get(s.start..s.start + s.len).ok_or_else(|| {
            EngineError::Internal(format!(
                "sequence {} has {} tokens, the plan computes {}..{}",
                s.id,
                q.tokens.len(),
                s.start,
                s.start + s.len
            ))
        })?;
        seqs.push(SeqInput {
            tokens,
            start_pos: s.start,
            block_table: &q.blocks,
            logits: if s.sample {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            },
            adapter: slot,
        });
        if s.sample {
            row_seqs.push(s.id);
        }
    }
    let inputs = StepInputs::new(block_size, &seqs)?;
    Ok(PreparedStep {
        inputs,
        row_seqs,
        adapters,
    })
}

pub struct ModelRunner {
    model: Arc<Model>,
    cache: KvCache,
    samplers: HashMap<SeqId, SequenceSampler>,
    /// The adapter of each sequence that has one.
    adapters: HashMap<SeqId, Arc<LoraAdapter>>,
}

impl ModelRunner {
    pub fn new(model: Arc<Model>, cache: KvCache) -> Self {
        ModelRunner {
            model,
            cache,
            samplers: HashMap::new(),
            adapters: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.cache.block_size()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    /// Registers a sequence's sampler and adapter; its sampling state
    /// (seeded stream, penalty counts, processors) survives preemption,
    /// which only drops KV.
    pub fn add_sequence(
        &mut self,
        id: SeqId,
        sampler: SequenceSampler,
        adapter: Option<Arc<LoraAdapter>>,
    ) {
        self.samplers.insert(id, sampler);
        if let Some(a) = adapter {
            self.adapters.insert(id, a);
        }
    }

    pub fn remove_sequence(&mut self, id: SeqId) {
        self.samplers.remove(&id);
        self.adapters.remove(&id);
    }

    /// The adapter sequence `id` runs with.
    pub fn adapter(&self, id: SeqId) -> Option<Arc<LoraAdapter>> {
        self.adapters.get(&id).cloned()
    }

    /// Runs one step of the plan and samples the sequences it completes.
    pub fn execute(&mut self, step: &PreparedStep) -> Result<RunnerOutput> {
        let ModelRunner {
            model,
            cache,
            samplers,
            ..
        } = self;
        let mut preparing: Vec<&mut SequenceSampler> = samplers
            .iter_mut()
            .filter(|(id, s)| s.wants_prepare() && step.row_seqs.contains(id))
            .map(|(_, s)| s)
            .collect();
        // Grammar masks need no logits: they are computed on a second
        // thread while the forward pass runs.
        let logits = if preparing.is_empty() {
            model.forward(&step.inputs, cache, &step.adapters)?
        } else {
            std::thread::scope(|scope| {
                let masks = scope.spawn(move || preparing.iter_mut().for_each(|s| s.prepare()));
                let logits = model.forward(&step.inputs, cache, &step.adapters);
                let joined = masks.join();
                if joined.is_err() {
                    return Err(EngineError::Internal(
                        "computing grammar masks panicked".into(),
                    ));
                }
                Ok(logits?)
            })?
        };
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let vocab = self.vocab_size();
        let mut out = RunnerOutput {
            sampled: Vec::with_capacity(step.row_seqs.len()),
            constraints: Vec::new(),
        };
        for (row, &id) in step.row_seqs.iter().enumerate() {
            let x = logits.get(row * vocab..(row + 1) * vocab).ok_or_else(|| {
                EngineError::Internal(format!(
                    "the forward pass returned {} logits for {} rows",
                    logits.len(),
                    step.row_seqs.len()
                ))
            })?;
            let sampler = self
                .samplers
                .get_mut(&id)
                .ok_or_else(|| EngineError::Internal(format!("sequence {id} has no sampler")))?;
            out.sampled.push((id, sampler.sample(x)));
            match sampler.constraint_status() {
                ConstraintStatus::Open => {}
                ended => out.constraints.push((id, ended)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::scheduler::Scheduled;

    fn seq(id: SeqId, tokens: Vec<u32>, blocks: Vec<u32>) -> SeqState {
        let mut s = SeqState::new(id, tokens, None, 0);
        s.blocks = blocks;
        s
    }

    fn plan(seqs: &[(SeqId, usize, usize, bool)]) -> Schedule {
        Schedule {
            seqs: seqs
                .iter()
                .map(|&(id, start, len, sample)| Scheduled {
                    id,
                    start,
                    len,
                    sample,
                })
                .collect(),
            preempted: Vec::new(),
        }
    }

    #[test]
    fn a_mixed_step_flattens_prefill_chunks_and_decodes() {
        // Sequence 7: a 6-token prompt, first chunk of 5 (no logits).
        // Sequence 3: 18 tokens known, 17 computed: one decode token.
        // Sequence 9: a 2-token prompt whole, blocks out of order.
        let seqs = [
            seq(7, (100..106).collect(), vec![4, 2]),
            seq(3, (0..18).collect(), vec![0, 1, 5]),
            seq(9, vec![50, 51], vec![6]),
        ];
        let by_id = |id: SeqId| seqs.iter().find(|s| s.id == id);
        let p = plan(&[(7, 0, 5, false), (3, 17, 1, true), (9, 0, 2, true)]);
        let step = prepare_step(&p, 8, by_id, |_| None).unwrap();
        let x = &step.inputs;
        assert_eq!(x.token_ids, [100, 101, 102, 103, 104, 17, 50, 51]);
        assert_eq!(x.positions, [0, 1, 2, 3, 4, 17, 0, 1]);
        assert_eq!(x.block_tables, [4, 2, 0, 1, 5, 6]);
        assert_eq!(x.block_table(1), [0, 1, 5]);
        // Slots: block * 8 + offset; position 17 is block 2 of seq 3 (5).
        assert_eq!(x.slot_mapping, [32, 33, 34, 35, 36, 41, 48, 49]);
        // Logits for the decode row and the last prompt row of seq 9.
        assert_eq!(x.logits_rows, [5, 7]);
        assert_eq!(step.row_seqs, [3, 9]);
        let rows: Vec<(usize, usize, usize)> = x
            .seqs
            .iter()
            .map(|s| (s.start, s.len, s.context_len))
            .collect();
        assert_eq!(rows, [(0, 5, 5), (5, 1, 18), (6, 2, 2)]);
        assert!(x.seqs.iter().all(|s| s.adapter_slot.is_none()));
    }

    #[test]
    fn a_block_table_short_of_the_tokens_is_an_error() {
        let seqs = [seq(1, (0..9).collect(), vec![0])];
        let p = plan(&[(1, 0, 9, true)]);
        let e = prepare_step(&p, 8, |id| seqs.iter().find(|s| s.id == id), |_| None).unwrap_err();
        assert!(e.to_string().contains("do not cover position 9"), "{e}");
    }

    #[test]
    fn a_plan_naming_an_unknown_sequence_or_tokens_is_an_error() {
        let seqs = [seq(1, vec![1, 2], vec![0])];
        let find = |id: SeqId| seqs.iter().find(|s| s.id == id);
        assert!(prepare_step(&plan(&[(2, 0, 1, true)]), 8, find, |_| None).is_err());
        assert!(prepare_step(&plan(&[(1, 1, 5, true)]), 8, find, |_| None).is_err());
    }
}
