//! Opens files in a granted directory in `flush` and never closes them, up
//! to `times` of them: a tenant trying to take the process's descriptors.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct FdHog(Vec<std::fs::File>);

impl Behaviour for FdHog {
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        let dir = config.out.as_deref().and_then(|o| o.rsplit_once('/')).map_or("/out", |(d, _)| d).to_string();
        for i in 0..config.times {
            let file =
                std::fs::File::create(format!("{dir}/hog-{i}")).map_err(|e| Error::fatal(format!("file {i}: {e}")))?;
            self.0.push(file);
        }
        Ok(())
    }
}

export_sink!(Program<FdHog>);
