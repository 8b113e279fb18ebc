//! The BMC operations the engine's steps use: a small trait so steps are tested against a
//! fake, implemented for real by [`BmcService`].

use crate::bmc_service::BmcService;
use bmc::{BootDevice, BootMode, PowerAction};
use futures::future::BoxFuture;
use futures::FutureExt;

/// What a step may ask of a machine's BMC. Errors are sentences for the job's log.
pub(crate) trait BmcActions: Send + Sync {
    /// Sets the next (or every, with `persistent`) boot's device.
    fn set_boot_device<'a>(
        &'a self,
        machine: &'a str,
        device: BootDevice,
        persistent: bool,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Powers the machine on, off or through a cycle.
    fn power<'a>(
        &'a self,
        machine: &'a str,
        action: PowerAction,
    ) -> BoxFuture<'a, Result<(), String>>;
}

impl BmcActions for BmcService {
    fn set_boot_device<'a>(
        &'a self,
        machine: &'a str,
        device: BootDevice,
        persistent: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            self.run(machine, |h| async move {
                h.set_boot_device(device, persistent, BootMode::Unchanged)
                    .await
            })
            .await
            .map_err(|e| e.message)
        }
        .boxed()
    }

    fn power<'a>(
        &'a self,
        machine: &'a str,
        action: PowerAction,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            self.run(machine, |h| async move { h.power(action).await })
                .await
                .map(|_| ())
                .map_err(|e| e.message)
        }
        .boxed()
    }
}

/// A BMC that records what it was asked and fails when told to (tests).
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// One call the fake received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Boot(String, BootDevice, bool),
        Power(String, PowerAction),
    }

    /// Records calls; the next `failures` calls fail.
    #[derive(Default)]
    pub(crate) struct FakeBmc {
        pub calls: Mutex<Vec<Call>>,
        pub failures: Mutex<u32>,
    }

    impl FakeBmc {
        fn answer(&self, call: Call) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(call);
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if *f > 0 {
                *f -= 1;
                return Err("the BMC answered 503".into());
            }
            Ok(())
        }

        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    impl BmcActions for FakeBmc {
        fn set_boot_device<'a>(
            &'a self,
            machine: &'a str,
            device: BootDevice,
            persistent: bool,
        ) -> BoxFuture<'a, Result<(), String>> {
            let r = self.answer(Call::Boot(machine.into(), device, persistent));
            async move { r }.boxed()
        }

        fn power<'a>(
            &'a self,
            machine: &'a str,
            action: PowerAction,
        ) -> BoxFuture<'a, Result<(), String>> {
            let r = self.answer(Call::Power(machine.into(), action));
            async move { r }.boxed()
        }
    }
}
