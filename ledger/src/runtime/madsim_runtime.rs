//! openraft's `AsyncRuntime` over madsim, so Raft runs deterministically in the simulator.
//!
//! - spawn / sleep go to madsim: tasks run on the current simulated node, so killing the node
//!   drops its Raft tasks, and simulated time drives every timer;
//! - the clock is `std::time::Instant`, which madsim intercepts;
//! - timeouts are a small named future (madsim's own returns a type we cannot name here);
//! - randomness is a `SmallRng` seeded from madsim's deterministic RNG, so a seed replays;
//! - mpsc, oneshot and mutex are openraft-rt-tokio's (tokio's sync types need no runtime);
//! - watch is openraft-rt-sim's: tokio's picks wakers with a thread-local RNG and breaks
//!   madsim's determinism check;
//! - `spawn_blocking` runs inline: the default starts an OS thread, which madsim forbids.

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::Add;
use std::ops::AddAssign;
use std::ops::Sub;
use std::ops::SubAssign;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use openraft_rt::AsyncRuntime;
use openraft_rt::OptionalSend;
use rand010::SeedableRng;
use rand010::rngs::SmallRng;

/// The simulator's runtime for openraft.
#[derive(Debug, Default)]
pub struct MadsimRuntime;

/// An instant on madsim's simulated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimClockInstant(std::time::Instant);

impl Add<Duration> for SimClockInstant {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        SimClockInstant(self.0 + rhs)
    }
}

impl AddAssign<Duration> for SimClockInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl Sub<Duration> for SimClockInstant {
    type Output = Self;
    fn sub(self, rhs: Duration) -> Self {
        SimClockInstant(self.0 - rhs)
    }
}

impl Sub<SimClockInstant> for SimClockInstant {
    type Output = Duration;
    fn sub(self, rhs: SimClockInstant) -> Duration {
        self.0.saturating_duration_since(rhs.0)
    }
}

impl SubAssign<Duration> for SimClockInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        self.0 -= rhs;
    }
}

impl openraft_rt::Instant for SimClockInstant {
    fn now() -> Self {
        SimClockInstant(std::time::Instant::now())
    }
}

/// A future did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutElapsed;

impl fmt::Display for TimeoutElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// `future`, or `TimeoutElapsed` once `sleep` completes first.
pub struct SimTimeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<madsim::time::Sleep>>,
}

impl<F: Future> Future for SimTimeout<F> {
    type Output = Result<F::Output, TimeoutElapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future goes first, so one that is ready at its deadline still counts.
        if let Poll::Ready(value) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimeoutElapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = madsim::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = madsim::task::JoinHandle<T>;
    type Sleep = madsim::time::Sleep;
    type Instant = SimClockInstant;
    type TimeoutError = TimeoutElapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        madsim::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        madsim::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        madsim::time::sleep_until(deadline.0)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        SimTimeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        SimTimeout {
            future: Box::pin(future),
            sleep: Box::pin(madsim::time::sleep_until(deadline.0)),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(madsim::rand::random::<u64>())
    }

    type Mpsc = openraft_rt_tokio::TokioMpsc;
    type Watch = openraft_rt_sim::SimWatch;
    type Oneshot = openraft_rt_tokio::TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = openraft_rt_tokio::TokioMutex<T>;

    fn new(_threads: usize) -> Self {
        MadsimRuntime
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        madsim::runtime::Runtime::new().block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::future::ready(Ok(f()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft_rt::AsyncRuntime;
    use openraft_rt::Instant;
    use rand010::RngExt;

    use super::MadsimRuntime;
    use super::SimClockInstant;

    #[madsim::test]
    async fn timers_spawn_and_timeouts_follow_simulated_time() {
        let start = SimClockInstant::now();
        MadsimRuntime::sleep(Duration::from_secs(5)).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        let task = MadsimRuntime::spawn(async { 41 + 1 });
        assert_eq!(task.await.expect("task completes"), 42);
        let late = MadsimRuntime::timeout(Duration::from_millis(10), MadsimRuntime::sleep(Duration::from_secs(1)));
        assert!(late.await.is_err(), "a slower future times out");
        let early = MadsimRuntime::timeout(Duration::from_secs(1), async { 7 });
        assert_eq!(early.await.expect("a ready future wins"), 7);
        let deadline = SimClockInstant::now() + Duration::from_millis(100);
        MadsimRuntime::sleep_until(deadline).await;
        assert!(SimClockInstant::now() >= deadline);
    }

    #[test]
    fn the_rng_is_a_function_of_the_seed() {
        let draw = |seed: u64| {
            let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.block_on(async {
                (0..4)
                    .map(|_| MadsimRuntime::thread_rng().random::<u64>())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
