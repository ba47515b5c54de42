//! The engine thread: owns the scheduler, the requests and the model
//! runner, and loops schedule → execute → update until told to stop
//! (vLLM v1's contract: the scheduler plans without tensors, the runner
//! executes without deciding, and the results update the sequences and
//! stream out as events).

use super::blocks::BlockManager;
use super::histograms::EngineHistograms;
use super::request::{AdapterRef, EngineEvent, EngineRequest, RequestTimes, TokenDelta, Usage};
use super::runner::{prepare_step, ModelRunner, RunnerOutput};
use super::scheduler::{Scheduler, SchedulerConfig, SeqId, SeqState};
use super::stats::EngineStats;
use super::{Command, EngineConfig, EngineInfo, Published, RequestId};
use crate::output::{FinishReason, OutputState};
use crate::sampling::{ConstraintStatus, SamplingParams, SequenceSampler};
use crate::structured::GrammarProcessor;
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

struct Sample {
    seq: SeqId,
    output: OutputState,
    done: bool,
}

struct Request {
    params: SamplingParams,
    prompt_len: usize,
    samples: Vec<Sample>,
    events: UnboundedSender<EngineEvent>,
    times: RequestTimes,
    cached_prompt_tokens: Option<usize>,
    /// When its latest tokens came out, and in which step (one
    /// inter-token latency per step, however many samples).
    last_token: Option<(Instant, u64)>,
}

impl Request {
    fn send(&self, e: EngineEvent) -> bool {
        self.events.send(e).is_ok()
    }
}

pub(crate) struct Worker {
    tokenizer: Arc<Tokenizer>,
    runner: ModelRunner,
    sched: Scheduler,
    info: EngineInfo,
    requests: HashMap<RequestId, Request>,
    owner: HashMap<SeqId, (RequestId, usize)>,
    next_seq: SeqId,
    stats: EngineStats,
    histograms: EngineHistograms,
    shared_stats: Arc<Mutex<Published>>,
    eos: Vec<u32>,
}

impl Worker {
    pub(crate) fn new(
        runner: ModelRunner,
        tokenizer: Arc<Tokenizer>,
        cfg: &EngineConfig,
        info: EngineInfo,
        shared_stats: Arc<Mutex<Published>>,
    ) -> Self {
        let blocks = BlockManager::new(info.num_blocks, cfg.block_size, cfg.enable_prefix_caching);
        let sched = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: cfg.max_num_seqs,
                max_num_batched_tokens: cfg.max_num_batched_tokens,
                enable_chunked_prefill: cfg.enable_chunked_prefill,
                policy: cfg.scheduling_policy,
            },
            blocks,
        );
        let eos = tokenizer.eos_token_ids().to_vec();
        Worker {
            tokenizer,
            runner,
            sched,
            info,
            requests: HashMap::new(),
            owner: HashMap::new(),
            next_seq: 0,
            stats: EngineStats {
                kv_blocks_total: info.num_blocks,
                ..EngineStats::default()
            },
            histograms: EngineHistograms::new(info.max_model_len),
            shared_stats,
            eos,
        }
    }

    pub(crate) fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if !self.sched.has_work() {
                match commands.recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            return self.shutdown();
                        }
                    }
                    Err(_) => return self.shutdown(),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            return self.shutdown();
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.shutdown(),
                }
            }
            // Aborts show in the stats before the next step runs.
            self.publish();
            if self.sched.has_work() {
                self.step();
                self.publish();
            }
        }
    }

    /// Applies one command; false means stop.
    fn handle(&mut self, c: Command) -> bool {
        match c {
            Command::Submit(submissions) => {
                for s in submissions {
                    self.admit(s.id, s.request, s.arrival, s.events);
                }
            }
            Command::Abort(id) => self.abort_request(id),
            Command::Shutdown => return false,
        }
        true
    }

    fn admit(
        &mut self,
        id: RequestId,
        r: EngineRequest,
        arrival: Instant,
        events: UnboundedSender<EngineEvent>,
    ) {
        let n = r.params.n.max(1);
        let mut samples = Vec::with_capacity(n);
        for index in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut sampler = SequenceSampler::new(&r.params, &r.prompt, &self.eos, index);
            if let Some(g) = &r.grammar {
                sampler.prepend_processor(Box::new(GrammarProcessor::new(g.matcher())));
            }
            self.runner
                .add_sequence(seq, sampler, r.adapter.as_ref().map(|a| a.weights.clone()));
            samples.push(Sample {
                seq,
                output: OutputState::new(&r.params, &r.prompt, &self.eos, self.info.max_model_len),
                done: false,
            });
            self.owner.insert(seq, (id, index));
            self.sched.add(SeqState::new(
                seq,
                r.prompt.clone(),
                r.adapter.as_ref().map(AdapterRef::cache_key),
                r.priority,
            ));
        }
        self.requests.insert(
            id,
            Request {
                params: r.params,
                prompt_len: r.prompt.len(),
                samples,
                events,
                times: RequestTimes::new(arrival),
                cached_prompt_tokens: None,
                last_token: None,
            },
        );
    }

    fn step(&mut self) {
        let started = Instant::now();
        let plan = self.sched.schedule();
        if plan.is_empty() {
            // Every admitted request fits the cache alone, so an empty plan
            // with work left is a bug; fail the head rather than spin.
            let stuck: Vec<RequestId> = self.requests.keys().copied().collect();
            for id in stuck {
                self.fail_request(id, "the scheduler could not make progress".into());
            }
            return;
        }
        for s in &plan.seqs {
            if let Some(&(rid, _)) = self.owner.get(&s.id) {
                if let Some(r) = self.requests.get_mut(&rid) {
                    r.times.scheduled.get_or_insert(started);
                    if r.cached_prompt_tokens.is_none() {
                        r.cached_prompt_tokens =
                            self.sched.seq(s.id).and_then(|q| q.cached_prompt_tokens);
                    }
                }
            }
        }
        let executed = prepare_step(
            &plan,
            self.runner.block_size(),
            |id| self.sched.seq(id),
            |id| self.runner.adapter(id),
        )
        .and_then(|step| self.runner.execute(&step));
        match executed {
            Ok(output) => self.update_from_output(output),
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                self.sched.blocks_mut().reset_prefix_cache();
                let failed: Vec<RequestId> = plan
                    .seqs
                    .iter()
                    .filter_map(|s| self.owner.get(&s.id).map(|o| o.0))
                    .collect();
                for id in failed {
                    self.fail_request(id, format!("the forward pass failed: {e}"));
                }
            }
        }
        for s in &plan.seqs {
            if let Some(q) = self.sched.seq(s.id) {
                if s.start < q.prompt_len || s.len > 1 {
                    self.stats.prompt_tokens += s.len as u64;
                }
            }
        }
        self.stats.steps += 1;
        self.stats.busy += started.elapsed();
        let step_tokens: usize = plan.seqs.iter().map(|s| s.len).sum();
        self.histograms
            .iteration_tokens_total
            .observe(step_tokens as f64);
    }

    /// Streams each sampled token and moves its sequence on (or ends it).
    fn update_from_output(&mut self, output: RunnerOutput) {
        let now = Instant::now();
        for (seq, picked) in output.sampled {
            let constraint = output
                .constraints
                .iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, c)| c);
            let Some(&(rid, index)) = self.owner.get(&seq) else {
                continue;
            };
            let Some(r) = self.requests.get_mut(&rid) else {
                continue;
            };
            let sample = &mut r.samples[index];
            let token = picked.token;
            if let Some(ConstraintStatus::Failed(msg)) = constraint {
                let msg = msg.clone();
                self.fail_request(rid, msg);
                continue;
            }
            let complete = constraint == Some(&ConstraintStatus::Complete);
            let update =
                match sample
                    .output
                    .push_constrained(&self.tokenizer, picked.token, complete)
                {
                    Ok(u) => u,
                    Err(e) => {
                        let msg = format!("detokenizing failed: {e}");
                        self.fail_request(rid, msg);
                        continue;
                    }
                };
            self.stats.generation_tokens += 1;
            if r.times.first_token.is_none() {
                r.times.first_token = Some(now);
                self.histograms
                    .time_to_first_token_seconds
                    .observe(now.duration_since(r.times.arrival).as_secs_f64());
            }
            let step = self.stats.steps;
            match r.last_token {
                Some((_, s)) if s == step => {}
                Some((t, _)) => {
                    self.histograms
                        .inter_token_latency_seconds
                        .observe(now.duration_since(t).as_secs_f64());
                    r.last_token = Some((now, step));
                }
                None => r.last_token = Some((now, step)),
            }
            let delivered = r.send(EngineEvent::Token(TokenDelta {
                index,
                token: picked.token,
                text: update.text,
                logprobs: r.params.logprobs.map(|_| picked),
                finish: update.finished.clone(),
            }));
            if !delivered {
                self.abort_request(rid);
                continue;
            }
            match update.finished {
                Some(reason) => self.finish_sample(rid, index, reason),
                None => self.sched.append_token(seq, token),
            }
        }
    }

    /// Ends sample `index` with `reason` and returns its blocks; the
    /// request ends with it when it was the last one running.
    fn finish_sample(&mut self, rid: RequestId, index: usize, reason: FinishReason) {
        self.close_sample(rid, index, reason);
        if self
            .requests
            .get(&rid)
            .is_some_and(|r| r.samples.iter().all(|s| s.done))
        {
            self.complete_request(rid);
        }
    }

    /// Aborts every unfinished sample of a request, then ends it.
    fn abort_request(&mut self, rid: RequestId) {
        let Some(r) = self.requests.get(&rid) else {
            return;
        };
        let open: Vec<usize> = (0..r.samples.len())
            .filter(|&i| !r.samples[i].done)
            .collect();
        for index in open {
            self.close_sample(rid, index, FinishReason::Abort);
        }
        self.complete_request(rid);
    }

    fn close_sample(&mut self, rid: RequestId, index: usize, reason: FinishReason) {
        let Some(r) = self.requests.get_mut(&rid) else {
            return;
        };
        let sample = &mut r.samples[index];
        if sample.done {
            return;
        }
        sample.done = true;
        let seq = sample.seq;
        let text = sample.output.text().to_string();
        match reason {
            FinishReason::Length => self.stats.finished_length += 1,
            FinishReason::Abort => self.stats.finished_abort += 1,
            _ => self.stats.finished_stop += 1,
        }
        r.send(EngineEvent::SampleFinished {
            index,
            reason,
            text,
        });
        self.sched.remove(seq);
        self.runner.remove_sequence(seq);
        self.owner.remove(&seq);
    }

    /// Sends a request's final event (every sample has finished).
    fn complete_request(&mut self, rid: RequestId) {
        let Some(mut r) = self.requests.remove(&rid) else {
            return;
        };
        r.times.finished = Some(Instant::now());
        let usage = Usage {
            prompt_tokens: r.prompt_len,
            completion_tokens: r.samples.iter().map(|s| s.output.generated()).sum(),
            cached_prompt_tokens: r.cached_prompt_tokens.unwrap_or(0),
        };
        self.histograms.observe_finished(
            &r.times,
            r.last_token.map(|(t, _)| t),
            usage.prompt_tokens,
            usage.completion_tokens,
            r.samples.len(),
            r.params.max_tokens,
        );
        r.send(EngineEvent::Finished {
            usage,
            times: r.times,
        });
    }

    fn fail_request(&mut self, rid: RequestId, message: String) {
        let Some(r) = self.requests.remove(&rid) else {
            return;
        };
        for s in &r.samples {
            self.sched.remove(s.seq);
            self.runner.remove_sequence(s.seq);
            self.owner.remove(&s.seq);
        }
        self.stats.finished_error += 1;
        r.send(EngineEvent::Error(message));
    }

    fn publish(&mut self) {
        let b = self.sched.blocks();
        let c = b.counters();
        self.stats.running = self.sched.num_running();
        self.stats.waiting = self.sched.num_waiting();
        self.stats.kv_blocks_used = b.num_used();
        self.stats.prefix_cache_queries = c.queries;
        self.stats.prefix_cache_hits = c.hits;
        self.stats.preemptions = self.sched.preemptions();
        let mut shared = match self.shared_stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        shared.stats = self.stats;
        shared.histograms.copy_from(&self.histograms);
        let names = |ids: &mut dyn Iterator<Item = &SeqId>| -> Vec<&str> {
            let mut v: Vec<&str> = ids
                .filter_map(|id| self.sched.seq(*id)?.adapter.as_deref())
                .map(|key| key.rsplit_once('#').map_or(key, |(name, _)| name))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let running = names(&mut self.sched.running().iter());
        let waiting = names(&mut self.sched.waiting().iter());
        let a = &mut shared.adapters;
        if a.running != running {
            a.running = running.into_iter().map(str::to_string).collect();
        }
        if a.waiting != waiting {
            a.waiting = waiting.into_iter().map(str::to_string).collect();
        }
    }

    fn shutdown(mut self) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.fail_request(id, "the engine is shutting down".into());
        }
        self.publish();
    }
}
