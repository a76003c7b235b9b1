package SyTest::HomeserverFactory::Weft;
use strict;
use warnings;
use base qw( SyTest::HomeserverFactory );
require SyTest::Homeserver::Weft;

sub _init
{
   my $self = shift;
   $self->{args} = { weft_binary => "weft", tls_proxy => 0 };
   $self->SUPER::_init( @_ );
}

# matched against tests' `implementation_specific => [...]`
sub implementation_name { "weft" }

sub get_options
{
   my $self = shift;
   return (
      'weft-binary=s' => \$self->{args}{weft_binary},
      'weft-tls-proxy' => sub { $self->{args}{tls_proxy} = 1 },
      # native TLS is the default; accepted so that older command lines still work
      'weft-native-tls' => sub { $self->{args}{tls_proxy} = 0 },
      $self->SUPER::get_options(),
   );
}

sub print_usage
{
   print STDERR <<EOF
       --weft-binary PATH       - path to the weft binary (default: weft on PATH)
       --weft-tls-proxy         - weft serves federation over plain HTTP and sytest
                                  terminates TLS in front of it (default: weft
                                  serves TLS itself with sytest's certificate)
EOF
}

sub create_server
{
   my $self = shift;
   return SyTest::Homeserver::Weft->new( @_, %{ $self->{args} } );
}

1;
