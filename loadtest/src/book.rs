//! Placeholder: filled in by the issue that owns this scenario.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("this scenario is not built yet")
}
