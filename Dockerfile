# shuffletrace container image: build with the toolchain, ship the one binary.
#   docker build -t shuffletrace:0.1.0 .
# (No container engine runs on the development machines; build on a workstation or in CI.)

FROM rust:1-bookworm AS build
# The kernel programs build with nightly + rust-src and bpf-linker; `cargo xtask build`
# installs what is missing (bpf-linker linked against nightly's own LLVM) and builds.
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo xtask build

FROM debian:bookworm-slim
COPY --from=build /src/target/release/shuffletrace /usr/local/bin/shuffletrace
ENTRYPOINT ["/usr/local/bin/shuffletrace"]
CMD ["run", "--format", "json"]
