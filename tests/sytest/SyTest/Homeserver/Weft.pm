package SyTest::Homeserver::Weft;
# Starts `weft serve` for SyTest, configured only through weft's own
# WEFT_<KEY> variables (see src/config.rs); on PostgreSQL when
# WEFT_TEST_POSTGRES is set (see start). weft's stdout/stderr go to
# <hs_dir>/weft.log as well as to SyTest's usual tail-on-exit.
use strict;
use warnings;
use base qw( SyTest::Homeserver );

use Carp;
use Future;
use File::Path qw( make_path remove_tree );
use IO::Async::SSL;
use IO::Async::Listener;
use IO::Async::Stream;
use SyTest::SSL qw( ensure_ssl_key create_ssl_cert );

sub _init
{
   my $self = shift;
   my ( $args ) = @_;
   $self->{$_} = delete $args->{$_} for qw( weft_binary tls_proxy );
   $self->SUPER::_init( $args );

   my $idx = $self->{hs_index};
   $self->{ports} = {
      federation => main::alloc_port( "weft[$idx].federation" ),  # TLS; part of server_name
      client     => main::alloc_port( "weft[$idx].client" ),
   };
   # only with --weft-tls-proxy: weft's plain-HTTP federation listener behind our TLS
   $self->{ports}{federation_plain} = main::alloc_port( "weft[$idx].federation_plain" )
      if $self->{tls_proxy};
}

# SyTest federates with "https://<server_name>", so server_name must be host:TLS-port.
sub server_name     { my $self = shift; "$self->{bind_host}:$self->{ports}{federation}" }
sub federation_host { $_[0]->{bind_host} }
sub federation_port { $_[0]->{ports}{federation} }
sub public_baseurl  { my $self = shift; "http://$self->{bind_host}:$self->{ports}{client}" }

sub start
{
   my $self = shift;
   my $hs_dir = $self->{hs_dir};
   my $bind   = $self->{bind_host};
   my $idx    = $self->{hs_index};

   my $data_dir = "$hs_dir/data";
   remove_tree( $data_dir );     # fresh state for every run
   make_path( $data_dir );

   $self->{paths}{tls_cert} = "$hs_dir/tls.crt";
   $self->{paths}{tls_key}  = "$hs_dir/tls.key";
   ensure_ssl_key( $self->{paths}{tls_key} );
   create_ssl_cert( $self->{paths}{tls_cert}, $self->{paths}{tls_key}, $bind );

   # weft listens on socket addresses, not host names
   my $listen_ip = $bind eq "localhost" ? "127.0.0.1" : $bind;
   my $fed_port = $self->{tls_proxy} ? $self->{ports}{federation_plain}
                                     : $self->{ports}{federation};
   my %env = (
      PATH                            => $ENV{PATH},
      RUST_BACKTRACE                  => 1,
      WEFT_LOG                        => $ENV{WEFT_LOG} // "info",
      WEFT_SERVER_NAME                => $self->server_name,
      WEFT_DATA_DIR                   => $data_dir,
      WEFT_CLIENT_LISTEN              => "$listen_ip:$self->{ports}{client}",
      WEFT_FEDERATION_LISTEN          => "$listen_ip:$fed_port",
      WEFT_ALLOW_REGISTRATION         => "true",        # tests register users with m.login.dummy
      WEFT_REGISTRATION_SHARED_SECRET => "reg_secret",  # /_synapse/admin/v1/register for admins
      WEFT_ALLOW_GUEST_ACCESS         => "true",        # tests register guests (kind=guest)
      WEFT_RATE_LIMITS                => "false",       # as SyTest's Synapse config: no rate limits
      WEFT_FEDERATION_VERIFY_TLS      => "false",       # sytest's servers use a test-CA certificate
      WEFT_EPHEMERAL_MESSAGES         => "true",        # MSC2228 tests (Synapse's rig turns it on too)
   );
   # with WEFT_TEST_POSTGRES (a libpq key=value admin connection string): a
   # new PostgreSQL database for every start, as fresh as the data directory
   if( my $admin = $ENV{WEFT_TEST_POSTGRES} ) {
      my $db = sprintf "weft_sytest_%d_%d_%08x", $$, $idx, int rand 2**32;
      system( "psql", "-qX", "-v", "ON_ERROR_STOP=1", "-d", $admin, "-c", "CREATE DATABASE $db" ) == 0
         or croak "psql could not create database $db through WEFT_TEST_POSTGRES ($admin)";
      ( my $conninfo = $admin ) =~ s/(^|\s)dbname=\S*//g;
      $env{WEFT_DATABASE_URL} = "$conninfo dbname=$db";
   }
   # application services SyTest registers (YAML files it wrote; 60app-services)
   my $as_files = $self->{app_service_config_files} // [];
   $env{WEFT_APP_SERVICE_CONFIG_FILES} = join( ",", @$as_files ) if @$as_files;
   # weft honours RUST_LOG over WEFT_LOG; pass it on only when it is set
   $env{RUST_LOG} = $ENV{RUST_LOG} if defined $ENV{RUST_LOG};
   if( $self->{tls_proxy} ) {
      $env{WEFT_FEDERATION_PLAIN_HTTP} = "true";
   }
   else {
      $env{WEFT_TLS_CERT} = $self->{paths}{tls_cert};
      $env{WEFT_TLS_KEY}  = $self->{paths}{tls_key};
   }
   # rooms created without a version get the one sytest was asked to test, if weft has it
   my $room_version = $main::TEST_ROOM_VERSION;
   $env{WEFT_DEFAULT_ROOM_VERSION} = $room_version
      if defined $room_version and $room_version =~ m/^(10|11|12)$/;

   $self->{log_path} = "$hs_dir/weft.log";
   $self->{output}->diag( "Starting weft $idx: $self->{weft_binary} serve (server_name " . $self->server_name
      . ( $self->{tls_proxy} ? ", TLS proxy" : ", native TLS" ) . "; log $self->{log_path})" );

   return $self->_start_process_and_await_connectable(
      setup        => [ env => \%env, chdir => $hs_dir ],
      command      => [ $self->{weft_binary}, "serve" ],
      connect_host => $bind,
      connect_port => $self->{ports}{client},
      name         => "weft-$idx",
   )->then( sub {
      $self->await_connectable( $bind, $fed_port );
   })->then( sub {
      $self->{tls_proxy} ? $self->_start_tls_proxy( $fed_port ) : Future->done;
   })->on_done( sub {
      $self->{output}->diag( "Started weft $idx" );
   });
}

# Keeps every line weft prints in <hs_dir>/weft.log.
sub _on_output_line
{
   my $self = shift;
   my ( $proc_info, $line ) = @_;
   if( defined $self->{log_path} and open my $fh, ">>", $self->{log_path} ) {
      print $fh "$line\n";
      close $fh;
   }
   $self->SUPER::_on_output_line( @_ );
}

# Minimal TLS terminator (--weft-tls-proxy): https://bind:federation -> http://bind:federation_plain
sub _start_tls_proxy
{
   my $self = shift;
   my ( $backend_port ) = @_;
   my $loop = $self->loop;
   my $bind = $self->{bind_host};

   my $listener = IO::Async::Listener->new(
      on_stream => sub {
         my ( undef, $front ) = @_;
         $loop->connect( host => $bind, service => $backend_port, socktype => "stream" )->then( sub {
            my ( $sock ) = @_;
            my $back = IO::Async::Stream->new(
               handle    => $sock,
               on_read   => sub { my ( undef, $buf ) = @_; $front->write( $$buf ); $$buf = ""; 0 },
               on_closed => sub { $front->close_when_empty },
            );
            $front->configure(
               on_read   => sub { my ( undef, $buf ) = @_; $back->write( $$buf ); $$buf = ""; 0 },
               on_closed => sub { $back->close_when_empty },
            );
            $loop->add( $back );
            $loop->add( $front );
            Future->done;
         })->retain;
      },
   );
   $self->add_child( $listener );
   return $listener->listen(
      host => $bind, service => $self->{ports}{federation}, socktype => "stream",
      extensions    => [qw( SSL )],
      SSL_cert_file => $self->{paths}{tls_cert},
      SSL_key_file  => $self->{paths}{tls_key},
   );
}

1;
